"""Host memory on CPU-only runs: keep what XLA frees for the next step.

XLA:CPU allocates each execution's temporaries (a train step's activations: 1.3 GiB for the
``small`` preset at batch 16) as one block from glibc's ``malloc``. glibc serves a block that
big with a fresh ``mmap`` and unmaps it on ``free``, so every step the kernel faults in and
zeroes all of its pages again: 337k page faults and ~0.6 s of system time per 2.7 s step on a
2-core EPYC. :func:`retain_freed_memory` tells glibc to serve large blocks from its heap
(``M_MMAP_MAX`` 0), never to give freed heap memory back (``M_TRIM_THRESHOLD``) and to keep
one arena (``M_ARENA_MAX`` 1: XLA's worker threads allocate the block, and a thread arena is
capped at 64 MiB, so it would fall back to ``mmap``). Then the block is reused, with no page
faults; the ``small`` step ran 15-29% faster (three separate-process pairs, BENCHMARKS.md).

The cost: the heap keeps its peak, about one more temporaries block (the next step's is
allocated while the current one runs), e.g. 2.1 → 4.6 GiB resident for ``small``. It must be
called before JAX starts its threads (glibc gives a thread its arena on first use), and only
pays where the step runs on the CPU, so it does nothing when an accelerator plugin is
installed or ``JAX_PLATFORMS`` names another platform first. ``JAXLM_HOST_MALLOC=system``
turns it off.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
from importlib.metadata import entry_points

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim
OPT_OUT = "JAXLM_HOST_MALLOC"


def cpu_only() -> bool:
    """Whether JAX will compute on the CPU: ``JAX_PLATFORMS`` lists ``cpu`` first, or it is
    unset and no accelerator plugin (PJRT plugins, libtpu) is installed."""
    forced = os.environ.get("JAX_PLATFORMS", "").strip()
    if forced:
        return forced.split(",")[0].strip() == "cpu"
    if os.environ.get("TPU_LIBRARY_PATH") or list(entry_points(group="jax_plugins")):
        return False
    return not any(importlib.util.find_spec(m) for m in ("libtpu", "jax_plugins"))


def retain_freed_memory() -> bool:
    """On glibc Linux, for a CPU-only run: keep freed memory in the heap for reuse (see the
    module docstring). Returns whether the settings were applied."""
    if os.environ.get(OPT_OUT, "").lower() == "system" or not cpu_only():
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
