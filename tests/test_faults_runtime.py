"""Fault injection at run time: a taken coordinator port, a C++ crash report of a process whose
peer died, a run directory that cannot be written, a disk that fills up, an unreachable hub,
a bad tokenizer corpus. Each ends with exactly one ``jaxlm: error:`` line on stderr (no
traceback, no pile of library messages), exit code 2 for bad input or settings and 1 for a
runtime fault, and what was saved before is intact.

A peer killed in the middle of a real 2-process run is in test_multihost_run.py
(``test_killing_a_process_ends_the_other...``): the survivor ends with one line there too.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jaxlm.checkpoint.integrity import verify
from jaxlm.errors import TrainingError
from jaxlm.runtime import tee
from jaxlm.runtime.coordinator import CoordinatorPortError, check_port_free, wait_for_coordinator

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
    """What a survivor's stderr tee does with JAX's heartbeat abort (see jaxlm.runtime.tee)."""
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

    def shown(data: bytes) -> str:
        return subprocess.run([sys.executable, "-I", "-S", tee.__file__, str(log), "1", "2"],
                              input=data, capture_output=True, timeout=30).stdout.decode()

    # jaxlm's own error line, printed after a report started, is passed on instead
    own = b"jaxlm: error: process 1 of 2 failed: gloo\n"
    assert one_line(shown(b"terminate called after throwing an instance of 'x'\n" + own)) \
        == own.decode().strip()
    # a coordination-service ERROR line is held back, and shown if nothing fatal follows ...
    warning = b"E1129 02:47:26.332570   26697 coordination_service.cc:1549] a hiccup\n"
    assert shown(b"step 1\n" + warning + b"step 2\n") == (b"step 1\n" + warning +
                                                            b"step 2\n").decode()
    # ... unless jaxlm failed after it with its own line, which is then all that is shown
    assert shown(warning + own) == own.decode()


# ---------------------------------------------------------- unwritable and full directories


def train_args(run_dir: Path, *overrides: str) -> list[str]:
    return ["train", TINY, f"train.run_dir={run_dir}", *QUIET, *overrides]


@pytest.fixture
def tmpfs(tmp_path):
    """A directory with a tmpfs of its own (64 MiB; we are root in a sandbox or container),
    or None where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
        capture_output=True).returncode == 0
    yield mnt if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def remount(mnt: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


def test_a_run_dir_under_a_regular_file_is_one_line(tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    proc = jaxlm(*train_args(afile / "run", "train.steps=2"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert f"the run directory {afile / 'run'} cannot be created: [Errno 20] Not a directory" \
        in line and "a part of that path is a regular file" in line and "train.run_dir" in line
    assert afile.read_text() == "mine"


@pytest.mark.slow
def test_a_read_only_run_dir_is_one_line_and_stays_as_it_was(tmp_path, tmpfs):
    if tmpfs is None and os.geteuid() == 0:
        pytest.skip("cannot mount a read-only filesystem here, and root ignores permissions")
    run = (tmpfs or tmp_path) / "run"
    assert jaxlm(*train_args(run, "train.steps=2")).returncode == 0
    before = tree_digest(run)
    if tmpfs is not None:
        remount(tmpfs, "ro")
    else:
        for p in [run, *run.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        proc = jaxlm(*train_args(run, "train.steps=4"))
    finally:
        if tmpfs is not None:
            remount(tmpfs, "rw")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert f"the run directory {run} cannot be written: [Errno" in line
    assert ("Read-only file system" if tmpfs else "Permission denied") in line
    assert tree_digest(run) == before  # checkpoints, metrics, logs: all as they were


def metrics_rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tmp_path, tmpfs, monkeypatch,
                                                                   capsys):
    if tmpfs is None:  # simulated: Orbax's writer fails as tensorstore does on a full disk
        return _simulated_full_disk(tmp_path, monkeypatch, capsys)
    run = tmpfs / "run"
    assert jaxlm(*train_args(run, "train.steps=2", "logging.every=1")).returncode == 0
    rows, step_2 = metrics_rows(run), tree_digest(run / "checkpoints" / "2")
    used_kb = shutil.disk_usage(tmpfs).used // 1024
    remount(tmpfs, f"size={used_kb + 512}k")  # room for a few metrics lines, not a checkpoint
    proc = jaxlm(*train_args(run, "train.steps=4", "logging.every=1"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert "[Errno 28] No space left on device" in line
    assert "latest complete: step 2" in line or "intact" in line, line
    assert tree_digest(run / "checkpoints" / "2") == step_2
    assert verify(run / "checkpoints" / "2") is None  # its manifest still matches
    assert metrics_rows(run)[: len(rows)] == rows  # what was logged before is untouched
    # with room again, the same command resumes from step 2 and logs every step once
    remount(tmpfs, "size=64m")
    again = jaxlm(*train_args(run, "train.steps=4", "logging.every=1"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(step 2)" in again.stdout + again.stderr
    steps = [r["step"] for r in metrics_rows(run) if "train/loss" in r]
    assert steps == [1, 2, 3, 4]


def _simulated_full_disk(tmp_path, monkeypatch, capsys) -> None:
    import orbax.checkpoint as ocp

    from jaxlm.cli import main

    run = tmp_path / "run"
    assert main(train_args(run, "train.steps=2")) == 0
    step_2 = tree_digest(run / "checkpoints" / "2")
    save = ocp.CheckpointManager.save

    def full(self, step, *args, **kwargs):
        if step > 2:
            raise ValueError('RESOURCE_EXHAUSTED: Error writing "params/0": Failed to write '
                             "4096 bytes: No space left on device [os_error_code='28']")
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    capsys.readouterr()
    assert main(train_args(run, "train.steps=4")) == 1
    line = one_line(capsys.readouterr().err)
    assert "[Errno 28] No space left on device" in line and "latest complete: step 2" in line
    assert tree_digest(run / "checkpoints" / "2") == step_2


@pytest.mark.slow
def test_metrics_hold_each_step_once_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    from jaxlm.cli import main

    run = tmp_path / "run"
    args = train_args(run, "train.steps=4", "checkpoint.every=2", "logging.every=1")
    assert main(args) == 0
    # a crash after step 4 was logged but before its checkpoint was complete
    shutil.rmtree(run / "checkpoints" / "4")
    assert main(args) == 0  # resumes from step 2 and redoes steps 3 and 4
    steps = [r["step"] for r in metrics_rows(run) if "train/loss" in r]
    assert steps == [1, 2, 3, 4]
    assert [r["step"] for r in metrics_rows(run) if r.get("event") == "checkpoint"] == [2, 4]
    tb_steps = []
    for f in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        for record in RawEventFileLoader(str(f)).Load():
            event = event_pb2.Event.FromString(record)
            tb_steps += [event.step for v in event.summary.value if v.tag == "train/loss"]
    assert sorted(tb_steps) == [1, 2, 3, 4]


# ------------------------------------------------------------------------- hub and inputs


def test_hub_in_offline_mode_is_one_line_without_telling_to_set_it(tmp_path):
    proc = jaxlm(*train_args(tmp_path / "run", "data.train.0.path=someone/no-such-dataset"),
                 env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert "is not in the local Hugging Face cache and offline mode is on (HF_HUB_OFFLINE=1" \
        in line
    assert "set HF_HUB_OFFLINE=1" not in line and "data.train.N.path" in line


@pytest.mark.slow
def test_an_unreachable_hub_is_one_line_without_retry_warnings(tmp_path):
    with socket.socket() as s:  # a local port where nothing listens: the hub, unreachable
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if "OFFLINE" not in k}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "jaxlm.cli",
                           *train_args(tmp_path / "run", "data.train.0.path=someone/dataset")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert "cannot be reached" in line and "HF_HUB_OFFLINE=1" in line


def test_tokenizer_training_refuses_a_too_small_vocabulary_and_an_empty_corpus(tmp_path,
                                                                              capsys):
    from jaxlm.cli import main

    text = tmp_path / "a.txt"
    text.write_text("to be or not to be\n" * 20)
    empty, blank = tmp_path / "empty.txt", tmp_path / "blank.jsonl"
    empty.write_text("")
    blank.write_text('{"text": "  "}\n\n')
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", str(text), "--vocab-size", "100", "--out", str(out)]) == 2
    assert "at least 259 tokens" in one_line(capsys.readouterr().err)
    assert main(["tokenizer", "train", str(empty), str(blank), "--vocab-size", "300", "--out",
                 str(out)]) == 2
    assert "hold no text" in one_line(capsys.readouterr().err)
    assert not out.exists()


def test_a_missing_eval_source_fails_before_training_or_saving(tmp_path, capsys):
    from jaxlm.cli import main

    run = tmp_path / "run"
    capsys.readouterr()
    assert main(train_args(run, "train.steps=4", f"data.eval.0.path={tmp_path}/nope.jsonl")) == 2
    assert "nope.jsonl" in one_line(capsys.readouterr().err)
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_a_failed_start_removes_the_run_dir_it_created_and_keeps_an_existing_one(tmp_path,
                                                                                capsys):
    """A bad data path (found after the run directory and its log exist) or a sample prompt
    longer than the context (found after config.json and the metrics files are written)
    leaves no run directory behind, nor the parents made for it; a directory that was there
    before keeps all it held."""
    from jaxlm.cli import main

    new = tmp_path / "runs" / "new"
    assert main(train_args(new, "data.train.0.path=/nonexistent")) == 2
    assert "matches no readable file" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()
    assert main(train_args(new, "train.steps=2", "train.sample_tokens=8",
                           "train.sample_prompt=" + "ROMEO " * 200)) == 2
    assert "train.sample_prompt" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()
    old = tmp_path / "old"
    (old / "notes").mkdir(parents=True)
    (old / "notes" / "keep.txt").write_text("mine")
    assert main(train_args(old, "data.train.0.path=/nonexistent")) == 2
    capsys.readouterr()
    assert (old / "notes" / "keep.txt").read_text() == "mine"
    assert (old / "logs").is_dir()  # its log of the failed start stays with it


def test_only_start_up_files_make_a_new_run_dir_disposable(tmp_path):
    from jaxlm.runtime.rundir import _disposable

    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "tensorboard").mkdir()
    log = run / "logs" / "process_0.log"
    for f in (log, run / "config.json", run / "metrics.jsonl",
              run / "tensorboard" / "events.out.tfevents.1"):
        f.write_text("" if f.name == "metrics.jsonl" else "x")
    assert sorted(p.name for p in _disposable(run, log)) == [
        "config.json", "events.out.tfevents.1", "metrics.jsonl", "process_0.log"]
    assert _disposable(run, None) is None  # a log that is not this process's
    (run / "metrics.jsonl").write_text('{"step": 1}\n')  # a logged step
    assert _disposable(run, log) is None
    (run / "metrics.jsonl").write_text("")
    (run / "checkpoints" / "2").mkdir()
    (run / "checkpoints" / "2" / "state").write_text("x")  # a checkpoint
    assert _disposable(run, log) is None


def test_a_malformed_json_line_is_named_by_file_and_line(tmp_path, capsys):
    from jaxlm.cli import main

    data = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"document {i} " * 20}) for i in range(1, 5001)]
    lines[3000] = '{"text": "cut short'  # line 3001
    data.write_text("\n".join(lines) + "\n")
    assert main(train_args(tmp_path / "run", "train.steps=2", f"data.train.0.path={data}",
                           "data.eval=null")) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{data}, line 3001: not valid JSON" in line


def test_yaml_errors_keep_their_line_and_column(tmp_path):
    from jaxlm.config import ConfigError, load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: 64\n  n_layers: [2\ntrain:\n  steps: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert "\n" not in msg and "line 4, column 6" in msg
    assert "flow sequence started at line 3, column 13" in msg


def test_an_unwritable_datasets_cache_is_named_not_the_data(tmp_path, monkeypatch, capsys):
    import datasets

    from jaxlm.cli import main
    from jaxlm.data.errors import DataError
    from jaxlm.finetune.labeled import _read_local

    (tmp_path / "a_file").write_text("")  # a cache under a file: not writable, even for root
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "a_file" / "c"))
    assert main(["train", TINY, f"train.run_dir={tmp_path / 'run'}", "train.steps=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "datasets cache" in err[0] and "not writable" in err[0], err
    assert "set HF_DATASETS_CACHE to a writable directory" in err[0] and "source" not in err[0]
    data = tmp_path / "labeled.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n')
    with pytest.raises(DataError, match="HF_DATASETS_CACHE"):  # fine-tuning data as well
        _read_local([str(data)], "json")
