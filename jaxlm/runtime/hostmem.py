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

**Which mode, per command** (:func:`apply`, called by the ``jaxlm`` command before anything
else). Retention pays where one step shape repeats: ``jaxlm train`` (the default run: 31 s
retained, 48 s without, peak RSS 1.27 against 0.95 GB). It does not where several shapes
share the heap: fine-tuning's length buckets, its eval and predict steps and the host-side
batches fragment the single arena, and the heap never shrinks. MiniLM fine-tuned at 32 x 256
peaked at 9.0 GiB retained against 3.8 GiB without (XLA plans 2.9 GiB for the step). There,
and for every command but ``train``, huge pages do the retention's job
without keeping anything: glibc's ``glibc.malloc.hugetlb=1`` tunable makes ``malloc`` ask
for transparent huge pages, so a fresh 2.6 GiB block is faulted in 2 MiB at a time (512x
fewer faults). The same MiniLM fine-tune took 59 s that way, 70 s retained and 93 s plain
malloc, at the plain peak (BENCHMARKS.md "Fine-tuning against PyTorch"). The tunable is read
when glibc starts, so :func:`apply` re-executes the process once with it in
``GLIBC_TUNABLES``, the same pid and arguments. Where the kernel has transparent huge pages
off, those commands retain memory as ``train`` does. ``bounded`` (opt-in) does both and
stops retaining once resident memory passes a budget (:func:`budget_bytes`: a sixth of
physical memory, or ``JAXLM_HOST_RETAIN_GIB``; :func:`bound_retention`, checked after each
step). It is not the default for ``finetune``: short texts kept retention's speed (65 s
against 89 s with huge pages alone for 200 MiniLM steps, 2.4 against 2.1 GiB), but at 32 x
256 the heap grew from under the budget to 9.0 GiB within the two steps in flight before the
check saw it, so the peak was retention's. ``JAXLM_HOST_MALLOC``: ``auto`` (the default: per
command as above), ``retain``, ``bounded``, ``huge_pages`` or ``system``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim
DEFAULTS = ((M_MMAP_MAX, 65536), (M_TRIM_THRESHOLD, 128 * 1024))  # glibc's (arenas stay 1)
OPT_OUT = "JAXLM_HOST_MALLOC"
MODES = ("auto", "retain", "bounded", "huge_pages", "system")
HUGE_PAGES = "glibc.malloc.hugetlb=1"  # glibc >= 2.35; older ones ignore it
RETAIN_COMMANDS = frozenset({"train"})  # one step shape repeating: retention pays
BOUNDED_COMMANDS: frozenset[str] = frozenset()  # none by default: see the module docstring
BUDGET_ENV = "JAXLM_HOST_RETAIN_GIB"
_budget: int | None = None  # bytes of resident memory up to which "bounded" retains
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def cpu_only() -> bool:
    """Whether JAX will compute on the CPU: ``JAX_PLATFORMS`` lists ``cpu`` first, or it is
    unset and no accelerator plugin (PJRT plugins, libtpu) is installed."""
    forced = os.environ.get("JAX_PLATFORMS", "").strip()
    if forced:
        return forced.split(",")[0].strip() == "cpu"
    if os.environ.get("TPU_LIBRARY_PATH") or list(entry_points(group="jax_plugins")):
        return False
    return not any(importlib.util.find_spec(m) for m in ("libtpu", "jax_plugins"))


def huge_pages_allowed(path: Path = THP) -> bool:
    """Whether the kernel gives transparent huge pages to memory that asks (``always`` or
    ``madvise`` in ``path``)."""
    try:
        mode = path.read_text()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


def choose(command: str | None, environ: Mapping[str, str] | None = None,
           thp: Path = THP) -> str:
    """The host-memory mode for ``jaxlm COMMAND``: ``retain``, ``huge_pages`` or ``system``
    (see the module docstring)."""
    env = os.environ if environ is None else environ
    asked = env.get(OPT_OUT, "auto").strip().lower() or "auto"
    if asked not in MODES:
        asked = "auto"
    if asked == "system" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "system"
    if asked == "auto":
        asked = ("retain" if command in RETAIN_COMMANDS else
                 "bounded" if command in BOUNDED_COMMANDS else "huge_pages")
    if asked == "huge_pages" and not huge_pages_allowed(thp):
        return "retain"
    return asked


def budget_bytes(environ: Mapping[str, str] | None = None) -> int:
    """Resident memory up to which ``bounded`` keeps freed memory: ``JAXLM_HOST_RETAIN_GIB``,
    else a sixth of physical memory (4 GiB on a 24 GiB machine)."""
    env = os.environ if environ is None else environ
    try:
        return int(float(env[BUDGET_ENV]) * 2**30)
    except (KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 6


def resident_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bound_retention() -> int | None:
    """In ``bounded`` mode, once resident memory passes the budget: stop keeping freed memory
    (glibc's defaults again: large blocks ``mmap``-ed, in huge pages where asked, and the
    heap trimmed), give back what the heap holds free, and return the resident bytes at that
    moment; None otherwise. Cheap (one read of ``/proc/self/statm``): the trainer calls it
    after every step."""
    global _budget
    if _budget is None:
        return None
    rss = resident_bytes()
    if rss <= _budget:
        return None
    _budget = None
    _mallopt(DEFAULTS)
    libc = ctypes.CDLL(None)
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    libc.malloc_trim(0)
    return rss


def apply(command: str | None) -> str:
    """Set this CPU-only process's host memory up for ``jaxlm COMMAND`` (before JAX starts):
    retain freed memory, or re-execute once with huge pages asked of glibc. Returns the mode
    in effect; nothing is changed when an accelerator does the work."""
    if not cpu_only():
        return "system"
    mode = choose(command)
    global _budget
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if mode in ("huge_pages", "bounded") and huge_pages_allowed():
        if HUGE_PAGES not in tunables.split(":"):
            env = {**os.environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables,
                                                                          HUGE_PAGES]))}
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    if mode == "huge_pages":
        return mode
    if mode in ("retain", "bounded") and retain_freed_memory():
        _budget = budget_bytes() if mode == "bounded" else None
        return mode
    return "system"


def retain_freed_memory() -> bool:
    """On glibc Linux, for a CPU-only run: keep freed memory in the heap for reuse (see the
    module docstring). Returns whether the settings were applied."""
    if os.environ.get(OPT_OUT, "").lower() == "system" or not cpu_only():
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    return _mallopt(SETTINGS)


def _mallopt(settings: tuple[tuple[int, int], ...]) -> bool:
    """Apply glibc ``mallopt`` settings; whether every one was accepted."""
    mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(param, value) == 1 for param, value in settings])
