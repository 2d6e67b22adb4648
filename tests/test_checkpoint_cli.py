"""`jaxlm train` killed and restarted: kill -9 at random points and SIGTERM give the same loss
at every step as an uninterrupted run (bitwise, same mesh); a changed config is refused with
one line; `jaxlm export` writes the parameters."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "pretrain" / "tiny.yaml")
STEPS = 30
ARGS = [TINY, "model.n_layers=1", "data.seq_len=32", f"train.steps={STEPS}", "logging.every=1",
        "checkpoint.every=4", "train.sample_tokens=0", "data.eval=null", "mesh.data=2",
        "logging.tensorboard=false", "logging.progress=false", "logging.memory_summary=false"]
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
       "JAX_PLATFORMS": "cpu", "USE_TORCH": "0",
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


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def losses(run_dir: Path) -> dict[int, list[float]]:
    """Every logged train loss per step (a step run twice, before and after a kill, twice)."""
    out: dict[int, list[float]] = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        rec = json.loads(line)
        if "train/loss" in rec:
            out.setdefault(rec["step"], []).append(rec["train/loss"])
    return out


def wait_for(run_dir: Path, proc: subprocess.Popen, lines: int = 0, step: int = 0,
             timeout: float = 300) -> bool:
    """Wait until metrics.jsonl logs ``lines`` losses in all and a loss at ``step`` or later;
    False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logged = losses(run_dir)
        if sum(map(len, logged.values())) >= lines and max(logged, default=0) >= step:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError(f"{run_dir}: no loss at step {step} after {timeout}s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[int, float]]:
    """An uninterrupted run: its directory and the loss of every step."""
    run_dir = tmp_path_factory.mktemp("reference")
    code, out, err = finish(start(run_dir))
    assert code == 0, err[-3000:]
    logged = losses(run_dir)
    assert sorted(logged) == list(range(1, STEPS + 1))
    return run_dir, {step: values[0] for step, values in logged.items()}


def assert_same_losses(run_dir: Path, expected: dict[int, float]) -> None:
    logged = losses(run_dir)
    assert sorted(logged) == list(range(1, STEPS + 1))
    for step, values in logged.items():  # bitwise: JSON floats round-trip exactly
        assert values == [expected[step]] * len(values), f"step {step}: {values}"


@pytest.mark.slow
def test_kill_9_at_random_points_resumes_exactly(tmp_path, reference):
    rng = random.Random(4)
    outputs, codes = [], []
    for step in sorted(rng.sample(range(3, STEPS - 2), 3)):  # kill once past these steps
        seen = sum(map(len, losses(tmp_path).values()))
        proc = start(tmp_path)
        if wait_for(tmp_path, proc, lines=seen + 1, step=step):
            time.sleep(rng.uniform(0, 0.05))
            proc.send_signal(signal.SIGKILL)
        code, out, err = finish(proc)
        assert code in (0, -9), err[-3000:]
        outputs.append(out)
        codes.append(code)
    assert codes.count(-9) >= 2, "the runs finished before they could be killed"
    code, out, err = finish(start(tmp_path))
    assert code == 0, err[-3000:]
    assert "resumed from" in "".join(outputs[1:]) + out
    assert_same_losses(tmp_path, reference[1])


def test_sigterm_saves_and_exits_then_resumes_exactly(tmp_path, reference):
    proc = start(tmp_path)
    assert wait_for(tmp_path, proc, lines=1), "finished before SIGTERM"
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 0, err[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("preempted at step"))
    step = int(line.split()[3].rstrip(":"))
    assert 1 <= step < STEPS
    assert f"saved {tmp_path / 'checkpoints' / str(step)}: train state" in line
    assert (tmp_path / "checkpoints" / str(step) / "state").is_dir()
    assert max(losses(tmp_path)) == step  # stopped right after the step it saved
    code, out, err = finish(start(tmp_path))
    assert code == 0, err[-3000:]
    assert f"resumed from {tmp_path / 'checkpoints' / str(step)} (step {step})" in out
    assert_same_losses(tmp_path, reference[1])


def test_changed_config_is_refused_in_one_line(tmp_path, reference):
    run_dir = reference[0]
    code, _, err = finish(start(run_dir, "data.seq_len=16", "train.steps=40"))
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("jaxlm: error: the checkpoint ") and "Traceback" not in err
    assert "data.seq_len=32 (checkpoint) vs 16" in last
    assert "checkpoint.allow_config_change=true" in last


@pytest.mark.slow
def test_export_cli(tmp_path, reference):
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "jaxlm.cli", "export", str(reference[0]),
                           str(out), "--dtype", "bfloat16"], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json",
                                               "tokenizer.json"}
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "jaxlm", "step": str(STEPS), "dtype": "bfloat16"}
        assert "backbone/wte/embedding" in f.keys()
        assert not any(k.startswith(("opt_state", "mu", "nu")) for k in f.keys())
    assert json.loads((out / "config.json").read_text())["data"]["seq_len"] == 32
    bad = subprocess.run([sys.executable, "-m", "jaxlm.cli", "export", str(tmp_path / "none"),
                          str(out)], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert bad.returncode == 2 and "does not exist" in bad.stderr.strip().splitlines()[-1]


def test_resuming_with_another_train_steps_says_the_schedule_changed(tmp_path, reference):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    code, out, err = finish(start(run_dir, f"train.steps={STEPS + 2}"))
    assert code == 0, err[-3000:]
    said = [line for line in (out + err).splitlines() if "another learning-rate schedule" in line]
    assert len(said) == 1, out[-3000:]
    assert f"train.steps={STEPS} (checkpoint) vs {STEPS + 2}" in said[0]
    assert sorted(losses(run_dir))[-1] == STEPS + 2
