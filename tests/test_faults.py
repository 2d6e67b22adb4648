"""Fault injection: silently corrupted checkpoints, two runs on one run directory, an export
over another model, divergence. Each ends in one line with the right exit code, and what was
saved before is intact."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxlm.cli import main
from jaxlm.runtime.runlock import LOCK

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "pretrain" / "tiny.yaml")
QUIET = ["logging.progress=false", "train.sample_tokens=0", "train.eval_batches=1",
         "logging.memory_summary=false"]


def train(run_dir, *overrides):
    return main(["train", TINY, f"train.run_dir={run_dir}", *QUIET, *overrides])


def largest_array_file(step_dir: Path) -> Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.slow
def test_corrupted_checkpoint_bytes_are_caught_and_the_previous_one_used(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, "train.steps=4", "checkpoint.every=2", "checkpoint.keep=3") == 0
    manifest = run / "checkpoints" / "4" / "jaxlm_manifest.json"
    assert manifest.is_file() and (run / "checkpoints" / "2" / "jaxlm_manifest.json").is_file()
    victim = largest_array_file(run / "checkpoints" / "4")
    size = victim.stat().st_size
    with open(victim, "r+b") as f:  # 4 KiB of garbage in the middle, size unchanged
        f.seek(max(0, size // 2 - 2048))
        f.write(os.urandom(min(4096, size)))
    assert victim.stat().st_size == size
    capsys.readouterr()
    assert train(run, "train.steps=6", "checkpoint.every=2", "checkpoint.keep=3") == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "does not match its checksum" in text and "using step 2" in text
    assert "resumed from" in text and "(step 2)" in text
    moved = list((run / "checkpoints_corrupt").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("4-")
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [
        2, 4, 6]


@pytest.mark.slow
def test_export_refuses_a_nonempty_directory_unless_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, "train.steps=2") == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"another model")
    capsys.readouterr()
    assert main(["export", str(run), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not empty (model.safetensors); pass --overwrite" in err and len(
        err.splitlines()) == 1
    assert (out / "model.safetensors").read_bytes() == b"another model"
    assert main(["export", str(run), str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").stat().st_size > 1000


def test_divergence_stops_before_saving_and_names_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, "train.steps=3", "train.warmup_steps=2") == 0  # a healthy checkpoint
    capsys.readouterr()
    code = train(run, "train.steps=40", "checkpoint.every=1", "train.warmup_steps=2",
                 "train.lr=1e3", "logging.every=1")
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged at step" in err[0]
    assert "stopped without saving the diverged state" in err[0]
    assert "the checkpoint of step 4 held the diverging update" in err[0]
    assert "the last good checkpoint is step 3" in err[0]
    assert "clip_norm" not in err[0]  # already in effect
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    bad_step = int(err[0].split("diverged at step ")[1].split(":")[0])
    saved = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < bad_step
    good = [r["train/loss"] for r in rows if "train/loss" in r and r["step"] <= max(saved)]
    assert good and all(loss < 20 for loss in good)  # no saved step holds a blown-up model


def _spawn(run_dir, *overrides):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.Popen([sys.executable, "-m", "jaxlm.cli", "train", TINY,
                             f"train.run_dir={run_dir}", *QUIET, *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_second_run_on_the_same_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    first = _spawn(run, "train.steps=400", "checkpoint.every=1000")
    deadline = time.time() + 300
    while not (run / LOCK).exists():
        assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
        time.sleep(0.1)
    second = _spawn(run, "train.steps=5")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("jaxlm: error: run directory") and "is in use by `jaxlm train` on " \
        f"host {socket.gethostname()} (pid {first.pid}, process 0)" in line
    while "train/loss" not in ((run / "metrics.jsonl").read_text()
                               if (run / "metrics.jsonl").exists() else ""):
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)  # preemption: saves and exits 0
    assert first.wait(timeout=300) == 0
    assert not (run / LOCK).exists()
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len({json.loads(r)["step"] for r in rows if "train/loss" in r}) == sum(
        1 for r in rows if "train/loss" in r)  # one writer: no step logged twice


def test_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                        "command": "train", "process": 0, "started": 0}))
    assert train(run, "train.steps=2") == 0
    out = capsys.readouterr()
    assert "taking over the run directory lock" in out.out + out.err
    assert not (run / LOCK).exists()
