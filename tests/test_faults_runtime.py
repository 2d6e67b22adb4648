"""Fault injection at run time: a taken coordinator port, a C++ crash report of a process whose
peer died, a run directory that cannot be written, a disk that fills up, an unreachable hub,
a bad tokenizer corpus. Each ends with exactly one ``jaxlm: error:`` line on stderr (no
traceback, no pile of library messages), exit code 2 for bad input or settings and 1 for a
runtime fault, and what was saved before is intact.

A peer killed in the middle of a real 2-process run is in test_multihost_run.py
(``test_killing_a_process_ends_the_other...``): the survivor ends with one line there too.
"""

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jaxlm import tee
from jaxlm.coordinator import CoordinatorPortError, check_port_free, wait_for_coordinator
from jaxlm.errors import TrainingError

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "pretrain" / "tiny.yaml")
QUIET = ["logging.progress=false", "train.sample_tokens=0", "train.eval_batches=1",
         "logging.memory_summary=false"]


def error_lines(stderr: str) -> list[str]:
    """The ``jaxlm: error:`` lines, after checking that nothing looks like a traceback or a
    library's log pile."""
    for noise in ("Traceback", "WARNING:", "ERROR:absl", "terminate called", "Check failure",
                  "Event loop is closed", "Retrying in"):
        assert noise not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("jaxlm: error:")]


def one_line(stderr: str) -> str:
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == lines[0], stderr[-3000:]  # the last line
    return lines[0]


def jaxlm(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``jaxlm ARGS`` in a fresh process (one CPU device), as a user runs it."""
    full = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run([sys.executable, "-m", "jaxlm.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, env=full, timeout=timeout)


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------ coordinator port


@pytest.fixture
def held_port():
    """A port held by a plain listening socket that never answers (another program)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def test_port_check_sees_a_taken_port_and_passes_a_free_one(held_port):
    with pytest.raises(CoordinatorPortError, match=f"port {held_port}.*Address already in use"):
        check_port_free(f"127.0.0.1:{held_port}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    check_port_free(f"127.0.0.1:{free}")  # no error


def test_a_silent_listener_is_not_taken_for_the_coordinator(held_port):
    t0 = time.monotonic()
    with pytest.raises(CoordinatorPortError, match="not the run's coordinator"):
        wait_for_coordinator(f"127.0.0.1:{held_port}", timeout=30, answer_timeout=0.5)
    assert time.monotonic() - t0 < 5


def test_a_grpc_like_server_passes_and_nothing_there_times_out():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]

    def answer() -> None:  # what a gRPC server does first: an (empty) HTTP/2 SETTINGS frame
        conn, _ = server.accept()
        conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    wait_for_coordinator(f"127.0.0.1:{port}", timeout=10)
    thread.join(5)
    server.close()  # now nothing listens there
    with pytest.raises(TrainingError, match="nothing accepted connections"):
        wait_for_coordinator(f"127.0.0.1:{port}", timeout=0.5)


def test_taken_coordinator_port_ends_every_process_in_one_line_within_seconds(tmp_path,
                                                                              held_port):
    run_dir = tmp_path / "run"
    procs, t0 = [], time.monotonic()
    for pid in range(2):
        env = {**os.environ, "JAXLM_COORDINATOR_ADDRESS": f"127.0.0.1:{held_port}",
               "JAXLM_NUM_PROCESSES": "2", "JAXLM_PROCESS_ID": str(pid), "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "jaxlm.cli", "train", TINY, f"train.run_dir={run_dir}",
             "train.steps=2", *QUIET], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=120) for p in procs]
    took = time.monotonic() - t0
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 2, err[-3000:]
        line = one_line(err)
        assert f"port {held_port}" in line and "distributed.coordinator_address" in line
    assert "cannot start the coordinator" in one_line(results[0][1])
    assert "not the run's coordinator" in one_line(results[1][1])
    assert took < 60, f"{took:.0f}s"  # imports + a 5 s answer timeout; JAX alone waited 300 s
    assert not run_dir.exists()  # nothing was written


# ----------------------------------------------------------------- C++ crash of a survivor


def test_a_crash_report_reaches_the_terminal_as_one_line(tmp_path):
    """What a survivor's stderr tee does with JAX's heartbeat abort (see jaxlm.tee)."""
    log = tmp_path / "process_0.log"
    report = (
        "\rtrain 40%\rtrain 50%\n"
        "E1129 02:47:26.332570   26697 coordination_service.cc:1549] Use error polling to "
        "propagate the following error to all tasks: UNAVAILABLE: The following tasks are "
        "unhealthy (stopped sending heartbeats):\n1\n"
        "F1129 02:47:26.333577   26708 client.h:80] Terminating process because the JAX "
        "distributed service detected fatal errors.\n*** Check failure stack trace: ***\n"
        "    @     0x7f41c6e40634  absl::log_internal::LogMessage::SendToLog()\n")
    proc = subprocess.run([sys.executable, "-I", "-S", tee.__file__, str(log), "0", "2"],
                          input=report.encode(), capture_output=True, timeout=30)
    shown = proc.stdout.decode()
    assert "train 50%" in shown and "Check failure" not in shown and "E1129" not in shown
    line = one_line(shown)
    assert line.startswith("jaxlm: error: process 0 of 2 stopped: JAX's coordination service "
                           "found that another process stopped sending heartbeats")
    assert str(log) in line
    kept = log.read_text()
    assert "Check failure stack trace" in kept and "client.h:80" in kept and line in kept
    # jaxlm's own error line, printed after a report started, is passed on instead
    proc = subprocess.run([sys.executable, "-I", "-S", tee.__file__, str(log), "1", "2"],
                          input=b"terminate called after throwing an instance of 'x'\n"
                                b"jaxlm: error: process 1 of 2 failed: gloo\n",
                          capture_output=True, timeout=30)
    assert one_line(proc.stdout.decode()) == "jaxlm: error: process 1 of 2 failed: gloo"
