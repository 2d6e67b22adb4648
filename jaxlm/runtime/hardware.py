"""What this machine is, and the ``auto`` model settings it decides.

The one place that probes the hardware: the CPU's model name and matmul instruction sets
(``/proc/cpuinfo``), whether bf16 matmuls pay off on the default backend, and so what
``model.dtype=auto`` and ``model.attention=auto`` become. A run resolves its config once, at
set-up (:func:`resolve_config`), after ``jax.distributed`` has started and before anything
is built; its ``config.json`` and checkpoints record the concrete values, and the models
only ever see concrete ones.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import jax

from jaxlm.config import Config, ModelConfig

MATMUL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the ones that matter here


@functools.cache
def cpu_model() -> str:
    """The host CPU's model name (``platform.machine()`` where /proc/cpuinfo is missing)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The host CPU's feature flags (empty where /proc/cpuinfo is missing)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: XLA:CPU's bf16 dots with f32 accumulation run on them."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


@functools.cache
def native_bf16() -> bool:
    """Whether bf16 matmuls are faster than f32 on the default backend.

    TPUs and GPUs: yes. CPUs: only with AMX or AVX512-BF16 (measured: on an AVX2-only CPU
    XLA's bf16→f32 dot runs ~1.5x slower than f32; with AMX it is ~4x faster).
    """
    return jax.default_backend() != "cpu" or cpu_has_native_bf16()


def resolve_auto(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with its ``auto`` settings made concrete for this machine: ``dtype`` (bf16
    where matmuls are faster in it, else f32) and ``attention``: the fused cuDNN kernel on
    NVIDIA GPUs in bf16/f16; on CPUs the written-out formula with its own backward (``xla``,
    bf16 matmuls both ways: measured 1.15x the step rate of ``dot_product`` on the 5.3M
    issue-13 model); elsewhere XLA's ``dot_product_attention``. A recorded ``cudnn`` is
    chosen again on a machine without an NVIDIA GPU (a run saved on one, loaded on a CPU)."""
    update: dict[str, str] = {}
    backend = jax.default_backend()
    if cfg.dtype == "auto":
        update["dtype"] = "bfloat16" if native_bf16() else "float32"
    if cfg.attention == "auto" or (cfg.attention == "cudnn" and backend != "gpu"):
        half = update.get("dtype", cfg.dtype) == "bfloat16"
        update["attention"] = ("cudnn" if backend == "gpu" and half
                               else "xla" if backend == "cpu" else "dot_product")
    return cfg.model_copy(update=update) if update else cfg


def resolve_config(cfg: Config) -> Config:
    """``cfg`` with ``model``'s ``auto`` settings resolved (see :func:`resolve_auto`)."""
    model = resolve_auto(cfg.model)
    return cfg if model is cfg.model else cfg.model_copy(update={"model": model})


def describe_cpu() -> str:
    """The host CPU for a benchmark report: its model and matmul instruction sets, e.g.
    ``Intel(R) Xeon(R) ... (avx2, avx512f, avx512_bf16, amx_bf16)``."""
    has = [f for f in MATMUL_FLAGS if f in cpu_flags()]
    return f"{cpu_model()} ({', '.join(has) or 'no AVX2'})"


def tpu_chips(root: str | Path = "/") -> list[str]:
    """The device files of the TPU chips on this machine, e.g. ``['/dev/vfio/0']``; empty
    where there are none (a CPU or GPU machine).

    TPU v4 and v5p chips appear as ``/dev/accel<N>``; v5e and v6e chips (Colab's TPU runtime,
    TPU VMs) as VFIO groups ``/dev/vfio/<N>`` beside the ``/dev/vfio/vfio`` control node, which
    is not a chip. ``root`` is the file-system root to look under (a fake tree in tests)."""
    dev = Path(root) / "dev"
    found = [p for p in dev.glob("accel*") if p.name[5:].isdigit()]
    found += [p for p in (dev / "vfio").glob("*") if p.name.isdigit()]
    return sorted("/" + str(p.relative_to(root)) for p in found)
