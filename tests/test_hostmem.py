"""jaxlm/runtime/hostmem.py: a CPU-only ``jaxlm`` process reuses freed memory instead of faulting in
fresh pages for every train step's temporaries."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxlm import cli
from jaxlm.runtime import hostmem

ROOT = Path(__file__).parents[1]

# A worker thread (as XLA's are) mallocs, touches and frees 256 MiB three times; the page
# faults of the last round are printed.
_ROUNDS = """
import ctypes, resource, sys, threading
from jaxlm.runtime.hostmem import retain_freed_memory
print(retain_freed_memory())
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []
def rounds(n=256 << 20):
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(n)
        ctypes.memset(p, 1, n)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=rounds)
t.start(); t.join()
print(faults[-1])
"""


def _last_round_faults(**env: str) -> tuple[bool, int]:
    full = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    out = subprocess.run([sys.executable, "-c", _ROUNDS], capture_output=True, text=True,
                         cwd=ROOT, env=full, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings")
def test_a_freed_block_is_reused_without_page_faults():
    applied, faults = _last_round_faults()
    assert applied and faults < 1000, faults  # 65,536 pages of 4 KiB when each is fresh
    applied, faults = _last_round_faults(JAXLM_HOST_MALLOC="system")
    assert not applied
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not (thp.exists() and "[always]" in thp.read_text()):  # else 2 MiB pages fault fewer
        assert faults > 30000, faults


def test_only_cpu_only_runs_change_malloc(monkeypatch):
    monkeypatch.setattr(hostmem, "entry_points", lambda group: [])
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    for platforms, expected in [("cpu", True), ("cpu,cuda", True), ("cuda,cpu", False),
                                ("tpu", False)]:
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        assert hostmem.cpu_only() is expected, platforms
    monkeypatch.delenv("JAX_PLATFORMS")
    assert hostmem.cpu_only()  # no accelerator plugin in this environment
    monkeypatch.setattr(hostmem, "entry_points", lambda group: ["xla_cuda13"])
    assert not hostmem.cpu_only()  # jax would pick the GPU: leave malloc alone
    assert not hostmem.retain_freed_memory()


def test_the_command_applies_it_and_in_process_calls_do_not(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(hostmem, "retain_freed_memory", lambda: calls.append(1) or True)
    missing = str(tmp_path / "missing.yaml")
    assert cli.main(["train", missing]) == 2  # called from Python (tests, notebooks): no
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["jaxlm", "train", missing])
    assert cli.main() == 2  # the `jaxlm` command
    assert calls == [1]


def test_the_mode_follows_the_command_and_the_kernel(tmp_path):
    thp = tmp_path / "enabled"
    thp.write_text("always [madvise] never\n")
    assert hostmem.choose("train", {}, thp) == "retain"  # one step shape: retention pays
    assert hostmem.choose("finetune", {}, thp) == "huge_pages"  # many shapes fragment it
    assert hostmem.choose("predict", {}, thp) == "huge_pages"
    assert hostmem.choose("finetune", {"JAXLM_HOST_MALLOC": "retain"}, thp) == "retain"
    assert hostmem.choose("train", {"JAXLM_HOST_MALLOC": "huge_pages"}, thp) == "huge_pages"
    assert hostmem.choose("train", {"JAXLM_HOST_MALLOC": "system"}, thp) == "system"
    thp.write_text("always madvise [never]\n")
    assert hostmem.choose("predict", {}, thp) == "retain"  # no huge pages: retain instead
    assert not hostmem.huge_pages_allowed(tmp_path / "missing")


_REEXEC = """
import os, sys
os.environ.setdefault("FIRST_PID", str(os.getpid()))
from jaxlm.runtime import hostmem
mode = hostmem.apply(sys.argv[1])
print(mode, os.environ.get("GLIBC_TUNABLES", ""), os.environ["FIRST_PID"] == str(os.getpid()))
"""


@pytest.mark.parametrize("command", ["predict", "train"])
def test_apply_reexecutes_once_with_huge_pages_or_retains(command):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "FIRST_PID")}
    out = subprocess.run([sys.executable, "-c", _REEXEC, command], capture_output=True,
                         text=True, env={**env, "JAX_PLATFORMS": "cpu"}, cwd=ROOT, check=True)
    lines = out.stdout.split("\n")
    assert len([ln for ln in lines if ln]) == 1, out.stdout  # printed once: one exec at most
    mode, *rest = lines[0].split()
    if command == "predict" and hostmem.huge_pages_allowed():
        assert mode == "huge_pages" and rest == [hostmem.HUGE_PAGES, "True"], lines[0]
    else:  # train, or a kernel without transparent huge pages
        assert mode == "retain" and rest == ["True"], lines[0]


def test_bounded_retention_stops_once_past_its_budget(monkeypatch):
    assert hostmem.choose("finetune", {"JAXLM_HOST_MALLOC": "bounded"}) == "bounded"
    assert hostmem.budget_bytes({"JAXLM_HOST_RETAIN_GIB": "1.5"}) == int(1.5 * 2**30)
    monkeypatch.setattr(hostmem, "_budget", None)
    assert hostmem.bound_retention() is None  # not in bounded mode: nothing to do
    monkeypatch.setattr(hostmem, "_budget", 10 * 2**40)
    assert hostmem.bound_retention() is None  # under budget: keeps retaining
    monkeypatch.setattr(hostmem, "_budget", 1)
    kept = hostmem.bound_retention()  # glibc's defaults again, heap trimmed
    assert kept is not None and kept > 2**20 and hostmem._budget is None
    assert hostmem.bound_retention() is None  # once


_BOUNDED = """
import sys
from jaxlm.runtime import hostmem
print(hostmem.apply("finetune"), hostmem._budget == hostmem.budget_bytes())  # bounded
"""


def test_the_bounded_mode_retains_within_a_budget():
    out = subprocess.run([sys.executable, "-c", _BOUNDED], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "JAXLM_HOST_MALLOC": "bounded"},
                         cwd=ROOT, check=True)
    assert out.stdout.split() == ["bounded", "True"], out.stdout
