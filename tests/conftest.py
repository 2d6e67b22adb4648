"""Test setup: 8 fake CPU devices (set before jax is imported), so sharding is tested everywhere."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One measured CPU peak (jaxlm.profiling) for the whole session, shared with subprocesses.
os.environ.setdefault("JAXLM_CACHE", tempfile.mkdtemp(prefix="jaxlm-cache-"))
