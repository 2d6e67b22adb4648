"""`jaxlm train` given bad or huge text: binary input ends in one line with exit code 2 (at
start-up, or mid-run after a checkpoint) and leaves earlier checkpoints and outputs as they
were; SIGTERM in the middle of a huge document saves promptly and the run resumes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datahelpers import long_text

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "pretrain" / "tiny.yaml")
ARGS = [TINY, "model.n_layers=1", "data.seq_len=32", "logging.every=1",
        "train.sample_tokens=0", "data.eval=null", "mesh.data=1", "logging.tensorboard=false",
        "logging.progress=false", "logging.memory_summary=false"]
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
       "JAX_PLATFORMS": "cpu", "USE_TORCH": "0", "HF_HUB_OFFLINE": "1",
       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory) -> None:
    """The runs share JAX's persistent compilation cache: only the first one compiles."""
    ENV["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jaxlm.cli", "train", *ARGS, f"train.run_dir={run_dir}", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)


def train(run_dir: Path, *extra: str) -> tuple[int, str, str]:
    proc = start(run_dir, *extra)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def snapshot(run_dir: Path) -> dict[str, str]:
    """Digest of every file a run saved (per-process logs, appended to by design, left out)."""
    return {str(p.relative_to(run_dir)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.parts[-2] != "logs"}


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxlm: error: "), err[-2000:]
    return lines[0]


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(x)["step"] for x in lines if "train/loss" in x]


@pytest.mark.slow
def test_binary_input_fails_in_one_line_and_leaves_the_run_intact(tmp_path):
    run = tmp_path / "run"
    code, _, err = train(run, "train.steps=2")
    assert code == 0, err[-2000:]
    before = snapshot(run)
    assert "checkpoints/2/state/_METADATA" in before and "config.json" in before
    noise = tmp_path / "random.txt"  # 1 MB of random bytes given as text
    noise.write_bytes(np.random.default_rng(0).bytes(1 << 20))
    code, _, err = train(run, "train.steps=4", f"data.train.0.path={noise}")
    assert code == 2
    assert f"data file '{noise}' does not look like text" in one_error_line(err)
    assert snapshot(run) == before  # nothing saved was touched, config.json included

    # A binary file reached mid-run (the reader reads ahead <= 64 documents): the run stops
    # there with the same one line, and the checkpoints before it stay as they were.
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(long_text(12_000, seed=1).replace("\n\n", "\n"))  # lines
    (data / "b.txt").write_bytes(noise.read_bytes()[:100_000])
    run2 = tmp_path / "run2"
    code, _, err = train(run2, "train.steps=1000", "checkpoint.every=2", "data.shuffle=false",
                         f"data.train.0.path={data}", "data.train.0.sample_by=line")
    assert code == 2
    assert f"data file '{data / 'b.txt'}' does not look like text" in one_error_line(err)
    steps = logged_steps(run2)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 4
    saved = sorted(int(p.name) for p in (run2 / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] == len(steps) - len(steps) % 2  # the last regular save
    assert all((run2 / "checkpoints" / str(s) / "state" / "_METADATA").exists() for s in saved)


@pytest.mark.slow
def test_sigterm_inside_a_huge_document_saves_promptly_and_resumes(tmp_path):
    huge = tmp_path / "huge.txt"
    block = long_text(1 << 20, seed=7) + "\n"
    with open(huge, "w") as f:
        for _ in range(100):  # 100 MB, one document
            f.write(block)
    run = tmp_path / "run"
    proc = start(run, "train.steps=100000", "checkpoint.every=1000", f"data.train.0.path={huge}")
    deadline = time.monotonic() + 240
    while max(logged_steps(run), default=0) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert time.monotonic() - sent < 20, "SIGTERM was not honoured promptly"
    assert proc.returncode == 0, err[-2000:]
    done = max(logged_steps(run))
    assert f"preempted at step {done}: saved" in out
    assert (run / "checkpoints" / str(done) / "state" / "_METADATA").exists()
    code, out, err = train(run, f"train.steps={done + 2}", "checkpoint.every=1000",
                           f"data.train.0.path={huge}")
    assert code == 0, err[-2000:]
    assert f"resumed from {run / 'checkpoints' / str(done)}" in out + err
    assert max(logged_steps(run)) == done + 2
