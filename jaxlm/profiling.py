"""How fast and how big: peak FLOP/s, MFU, ``jax.profiler`` traces and a memory summary.

* **Peak FLOP/s per device** comes from a table of known TPU and GPU types (dense bf16, as
  the vendors publish it); on CPU there is no such number, so it is *measured* once per
  machine at the matmul plateau (bf16×bf16→f32 and f32 matmuls up to 4096², before any
  training work starts; cached in ``~/.cache/jaxlm``) and divided among the local CPU
  devices, since fake devices share the same cores. ``logging.peak_tflops`` overrides it.
* **MFU** = model FLOPs per second per device / peak. Model FLOPs come from
  :func:`jaxlm.models.flops.flops_per_token`, the one place they are counted.
* **Traces**: ``train.profile_steps=[a, b]`` records steps a..b (inclusive, numbered as they
  are logged: step k is the k-th update) into ``RUN_DIR/profile``, which TensorBoard's profile
  plugin (``pip install tensorboard-plugin-profile``) shows under the run ``profile``.
* **Memory**: bytes per device of parameters and optimizer state (from their shardings) and
  the compiled step's temporaries (from ``memory_analysis()``), printed at start-up so an
  out-of-memory is predicted rather than met.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import ConfigError, ModelConfig
from jaxlm.models.flops import flops_per_token
from jaxlm.runtime.hardware import MATMUL_FLAGS, cpu_flags, cpu_model

# Dense bf16 peak FLOP/s per *JAX device*, matched as a lower-case substring of
# ``device.device_kind``, first match wins (so more specific names come first). TPU v2/v3
# expose each of a chip's two cores as a device, hence the halved per-chip figures.
PEAK_FLOPS: list[tuple[str, float]] = [
    # Google TPUs (cloud.google.com/tpu/docs/<version>)
    ("tpu v2", 45e12 / 2),
    ("tpu v3", 123e12 / 2),
    ("tpu v4 lite", 137.5e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports itself as "TPU v5"
    ("tpu v6 lite", 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12),
    # NVIDIA GPUs (datasheets; dense tensor-core bf16, i.e. half the "with sparsity" figure)
    ("gb200", 2.5e15),
    ("b200", 2.25e15),
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989e12),  # SXM (device_kind "NVIDIA H100 80GB HBM3")
    ("h200", 989e12),  # also matches GH200
    ("h800", 989e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("a10g", 70e12),
    ("a10", 125e12),
    ("l40s", 362e12),
    ("l40", 181e12),
    ("l4", 121e12),
    ("a6000", 154.8e12),
    ("v100", 125e12),  # fp16: V100 has no bf16
    ("t4", 65e12),  # fp16
    # AMD
    ("mi300x", 1307e12),
    ("mi250x", 383e12 / 2),  # one device per GCD
]


def table_peak_flops(device_kind: str) -> float | None:
    """Peak FLOP/s of one device of this kind from :data:`PEAK_FLOPS`; None when unknown."""
    kind = device_kind.lower()
    return next((flops for name, flops in PEAK_FLOPS if name in kind), None)


def _cpu_fingerprint() -> str:
    """What the measured CPU peak depends on: the CPU model and matmul ISA, the core count,
    the jax version and XLA flags (a peak is only reused on the same machine and software)."""
    flags = ",".join(f for f in MATMUL_FLAGS if f in cpu_flags())
    xla = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", "")).strip()
    return f"{cpu_model()}|{flags}|{os.cpu_count()}|jax {jax.__version__}|{xla}"


def cache_dir() -> Path:
    return Path(os.environ.get("JAXLM_CACHE", "~/.cache/jaxlm")).expanduser()


def _matmul_rate(n: int, dtype: Any, repeats: int = 3) -> float:
    """FLOP/s of an (n, n) @ (n, n) matmul in ``dtype`` (f32 accumulation) on the host CPU:
    the best of ``repeats`` timings after a warm-up."""
    dev = jax.local_devices(backend="cpu")[0]
    dims = (((1,), (0,)), ((), ()))
    matmul = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims,
                                                      preferred_element_type=jnp.float32))
    a = jax.device_put(jnp.ones((n, n), dtype), dev)
    matmul(a, a).block_until_ready()  # compile and warm up
    fastest = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        matmul(a, a).block_until_ready()
        fastest = min(fastest, time.perf_counter() - t)
    return 2 * n**3 / fastest


def measure_matmul_plateau(max_n: int = 4096) -> float:
    """FLOP/s of this host's CPU at the matmul plateau: the best rate of bf16×bf16→f32 and
    f32 square matmuls of 1024, 2048 ... ``max_n`` (best of 3 timings each, 2 at the largest).
    Every size is timed: stopping at the first size that does not grow let one noisy timing
    end the climb well below the plateau. A few seconds."""
    sizes = [n for n in (1024, 2048, 4096, 8192) if n <= max_n] or [max_n]
    return max(_matmul_rate(n, dtype, repeats=2 if n == sizes[-1] else 3)
               for dtype in (jnp.bfloat16, jnp.float32) for n in sizes)


# A cached peak that a quick probe beats by more than this was measured on a busy machine.
PROBE_MARGIN = 1.1


@functools.cache
def measure_cpu_peak_flops() -> float:
    """This host CPU's peak FLOP/s (the whole machine: XLA:CPU uses every core for one dot),
    measured at the matmul plateau (:func:`measure_matmul_plateau`) and cached in
    ``$JAXLM_CACHE`` (default ``~/.cache/jaxlm``) under the CPU model, core count, jax version
    and XLA flags. Divide by the process's CPU devices for a per-device figure (see
    :func:`peak_flops_per_device`).

    A measurement taken while other work shared the CPU reads low, and a low peak inflates
    MFU. So a cached figure is checked against a quick probe (one 2048² matmul per dtype,
    well under a second): when the probe beats it by more than :data:`PROBE_MARGIN`, the
    plateau is measured again and the cache only ever moves up (also when several processes
    measure at once).
    """
    key = _cpu_fingerprint()
    path = cache_dir() / "cpu_peak_flops.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    known = cached.get(key)
    probe = 0.0
    if isinstance(known, (int, float)) and known > 0:
        probe = max(_matmul_rate(2048, dtype, repeats=2) for dtype in (jnp.bfloat16, jnp.float32))
        if probe <= known * PROBE_MARGIN:
            return float(known)
    peak = max(measure_matmul_plateau(), probe)
    return _raise_cached(path, key, peak)


def _raise_cached(path: Path, key: str, peak: float) -> float:
    """Record ``peak`` under ``key`` unless the cache already holds a higher one (another
    process may have written it since this one read: runs and test workers share the cache),
    under a lock; returns the figure the cache holds now."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                cached = json.loads(path.read_text())
            except (OSError, ValueError):
                cached = {}
            known = cached.get(key)
            if isinstance(known, (int, float)) and known >= peak:
                return float(known)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**cached, key: peak}, indent=1))
            os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache: measured again next time
    return peak


def peak_flops_per_device(override_tflops: float | None = None) -> float | None:
    """The MFU denominator: ``override_tflops`` if given, else the table for the local device
    kind, else (CPU) the measured host rate split over this process's CPU devices.

    None for an accelerator missing from the table (MFU is then not logged; set
    ``logging.peak_tflops``).
    """
    if override_tflops is not None:
        return override_tflops * 1e12
    dev = jax.local_devices()[0]
    if dev.platform == "cpu":
        return measure_cpu_peak_flops() / len(jax.local_devices(backend="cpu"))
    return table_peak_flops(dev.device_kind)


def throughput(
    model: ModelConfig, seq_len: int, global_batch: int, step_time: float, n_devices: int,
    peak_flops: float | None, head_positions: int | None = None,
) -> dict[str, float]:
    """Tokens/s, model TFLOP/s per device and (when the peak is known) MFU for one step.

    Model FLOPs count the useful work only (no rematerialisation), as MFU is defined;
    ``head_positions`` as :func:`~jaxlm.models.flops.flops_per_token` takes it.
    """
    tokens = global_batch * seq_len
    flops_per_device = (flops_per_token(model, seq_len, head_positions=head_positions)
                        * tokens / step_time / n_devices)
    out = {"tokens_per_sec": tokens / step_time, "tflops_per_device": flops_per_device / 1e12}
    if peak_flops:
        out["mfu"] = flops_per_device / peak_flops
    return out


def device_memory() -> dict[str, float]:
    """Bytes in use / peak on the first local device, where the backend reports it (GPU,
    TPU; not CPU), as GiB scalars for the train log."""
    stats = jax.local_devices()[0].memory_stats() or {}
    out = {}
    if "bytes_in_use" in stats:
        out["memory_in_use_gib"] = stats["bytes_in_use"] / 2**30
    if "peak_bytes_in_use" in stats:
        out["memory_peak_gib"] = stats["peak_bytes_in_use"] / 2**30
    return out


# ------------------------------------------------------------------------------- memory


def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a pytree of (possibly sharded) arrays: each leaf's shard size
    from its sharding (the largest shard, for uneven splits), summed."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            continue
        sharding = getattr(leaf, "sharding", None)
        shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


@dataclasses.dataclass(frozen=True)
class MemorySummary:
    """Bytes per device: state (params + optimizer), and the compiled step's own buffers."""

    params: int
    opt_state: int
    temps: int  # scratch the compiled step allocates (activations, gradients, ...)
    arguments: int  # all inputs: state + batch
    outputs: int
    aliased: int  # outputs written in place of donated inputs (not double counted)
    code: int

    @property
    def total(self) -> int:
        """Peak estimate: inputs + outputs not aliased to inputs + temporaries."""
        return self.arguments + self.outputs - self.aliased + self.temps

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}

    def scalars(self) -> dict[str, int]:
        """For the metrics log: ``params_bytes``, ``opt_state_bytes``, ``temps_bytes``, ..."""
        return {f"{k}_bytes": v for k, v in self.as_dict().items()}

    def format(self) -> str:
        gib = {k: f"{v / 2**30:.3f} GiB" if v >= 2**27 else f"{v / 2**20:.1f} MiB"
               for k, v in self.as_dict().items()}
        return (f"memory per device: params {gib['params']}, optimizer state {gib['opt_state']}, "
                f"step temporaries {gib['temps']}, step total ~{gib['total']} "
                f"(arguments {gib['arguments']}, outputs {gib['outputs']}, "
                f"aliased {gib['aliased']})")


def memory_summary(compiled: Any, params: Any, opt_state: Any) -> MemorySummary:
    """Summarise a compiled train step (``jitted.lower(state, batch).compile()``): per-device
    bytes of params and optimizer state from their shardings, temporaries and buffer totals
    from XLA's ``memory_analysis()`` (zeros where a backend reports none)."""
    stats = compiled.memory_analysis()

    def get(name: str) -> int:
        return int(getattr(stats, name, 0) or 0) if stats is not None else 0

    return MemorySummary(
        params=bytes_per_device(params), opt_state=bytes_per_device(opt_state),
        temps=get("temp_size_in_bytes"), arguments=get("argument_size_in_bytes"),
        outputs=get("output_size_in_bytes"), aliased=get("alias_size_in_bytes"),
        code=get("generated_code_size_in_bytes"),
    )


# ----------------------------------------------------------------------------- tracing


class StepProfiler:
    """Captures a ``jax.profiler`` trace of steps ``[first, last]`` into ``log_dir``.

    Call :meth:`before` with the number of the step about to run and :meth:`after` with the
    step just run (and something to block on, so the trace holds the whole step); call
    :meth:`close` in a ``finally`` so an exception never leaves a trace running.
    """

    def __init__(self, steps: list[int] | None, log_dir: str | Path, total_steps: int) -> None:
        self.log_dir = Path(log_dir)
        self.range: tuple[int, int] | None = None
        self.active = False
        if steps is None:
            return
        if len(steps) != 2 or not 1 <= steps[0] <= steps[1] <= total_steps:
            raise ConfigError(
                f"train.profile_steps={list(steps)} must be [first, last] with "
                f"1 <= first <= last <= train.steps={total_steps}")
        self.range = (steps[0], steps[1])

    def before(self, step: int) -> None:
        if self.range is not None and step == self.range[0] and not self.active:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.log_dir))
            self.active = True

    def after(self, step: int, block_on: Any = None) -> bool:
        """Stop after the last profiled step; True when a trace was just written."""
        if self.active and self.range is not None and step >= self.range[1]:
            jax.block_until_ready(block_on)
            self.close()
            return True
        return False

    def close(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
