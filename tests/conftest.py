"""Test setup: 8 fake CPU devices (set before jax is imported), so sharding is tested everywhere."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One measured CPU peak (jaxlm.profiling) for the whole test run, shared with subprocesses and,
# under pytest-xdist, with every worker of the run (they share PYTEST_XDIST_TESTRUNUID).
_run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _run_id:
    _shared = os.path.join(tempfile.gettempdir(), f"jaxlm-cache-{_run_id}")
    os.makedirs(_shared, exist_ok=True)
    os.environ.setdefault("JAXLM_CACHE", _shared)
os.environ.setdefault("JAXLM_CACHE", tempfile.mkdtemp(prefix="jaxlm-cache-"))
# One persistent XLA compilation cache for the whole session, shared with subprocesses (the CLI
# tests compile the same tiny models again and again; a warm hit skips most of a compile).
# Multi-process CPU runs turn it off themselves (jaxlm.runtime.distributed).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ["JAXLM_CACHE"], "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
