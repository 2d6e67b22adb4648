"""Real multi-process runs on 127.0.0.1 through launch/local.sh (2 processes x 4 CPU devices).

* 2 x 4 trains to the same per-step losses as 1 x 8 (and the same held-out loss);
* the checkpoint the 2 processes wrote restores in 1 process, onto another mesh, and equals
  the 1-process run's;
* killing one of the 2 processes ends the other, with JAX's error, in bounded time.

The data setting matters. With the default ``data.mode=pack`` every process packs *its own*
documents into rows (the corpus is one file, so process p keeps documents p, p+2, ...): a
2-process global batch holds other token rows than a 1-process one and the losses differ,
correctly. With one document per row (``data.mode=pad data.truncate=true``) and no shuffle,
both global batches hold the same 8 documents (process 0 rows = documents 0,2,4,6, process 1
rows = 1,3,5,7; one process: 0..7), only in another row order, which a mean loss does not see;
float32 compute makes the sums agree to ~1e-7.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from jaxlm.checkpoint.checkpointer import Checkpointer
from jaxlm.config import load_config
from jaxlm.runtime.distributed import FATAL_MARKER
from jaxlm.train.pretrain import setup, train

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "pretrain" / "tiny.yaml")
SAME_BATCHES = [  # see the module docstring
    "model.n_layers=1", "model.dtype=float32", "data.mode=pad", "data.truncate=true",
    "data.shuffle=false", "train.steps=4", "logging.every=1", "train.eval_batches=1",
    "train.sample_tokens=0", "logging.tensorboard=false", "logging.memory_summary=false",
    "logging.progress=false", "checkpoint.every=1000",  # one checkpoint, after the last step
    "data.eval=null",  # (held-out loss: same documents too, but one compile less)
]
# Every launch is given one persistent compilation cache: the 1-process run uses it; the
# 2-process launches must turn it off (reusing it hangs their collectives on jax 0.12, CPU).
CACHE = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
CACHE_OFF = "persistent compilation cache"


def local_sh(run_dir: Path, log_dir: Path, *overrides: str, wait: bool = True,
             processes: int = 2, devices: int = 4) -> Any:
    """``launch/local.sh -n 2 -d 4 train tiny.yaml ...`` with this interpreter's jaxlm."""
    env = {**os.environ, **CACHE, "JAXLM": f"{sys.executable} -m jaxlm.cli",
           "PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "launch" / "local.sh"), "-n", str(processes), "-d", str(devices),
           "-o", str(log_dir), "-g", "120", "train", TINY, f"train.run_dir={run_dir}", *overrides]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=env)


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(run_dir: Path, key: str) -> dict[int, float]:
    return {m["step"]: m[key] for m in metrics(run_dir) if key in m}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    CACHE["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 4 steps as 2 processes x 4 devices (local.sh) and as 1 process x 8 devices."""
    base = tmp_path_factory.mktemp("multihost")
    two, one = base / "two", base / "one"
    proc = local_sh(two, base / "launch_logs", *SAME_BATCHES, "distributed.heartbeat_timeout=30")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert jax.device_count() == 8  # tests/conftest.py
    train(load_config(TINY, [*SAME_BATCHES, f"train.run_dir={one}"]))
    return {"two": two, "one": one, "proc": proc, "launch_logs": base / "launch_logs"}


def test_two_processes_train_to_the_same_losses_as_one(runs):
    two, one = losses(runs["two"], "train/loss"), losses(runs["one"], "train/loss")
    assert sorted(two) == sorted(one) == [1, 2, 3, 4]
    np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)],
                               rtol=1e-5)
    assert two[4] < two[1]  # it did train
    # process 0 printed for the run; each process kept its own log
    out = runs["proc"].stdout + runs["proc"].stderr
    assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1} on 8 cpu device(s)" in out
    assert "Warning" not in out  # e.g. no DataWarning for the embedded corpus's one file
    for i in range(2):
        log = (runs["two"] / "logs" / f"process_{i}.log").read_text()
        assert f"process {i} of 2 joined the run" in log
        assert (runs["launch_logs"] / f"process_{i}.out").exists()
    assert "mesh {" not in (runs["two"] / "logs" / "process_1.log").read_text()


def test_checkpoint_of_two_processes_restores_in_one(runs):
    # restore both runs' final checkpoints in this one process, onto a (2, 2, 2) mesh
    cfg = load_config(TINY, [*SAME_BATCHES, f"train.run_dir={runs['two']}", "mesh.fsdp=2",
                             "mesh.tensor=2"])
    run = setup(cfg)
    restored = {}
    for name in ("two", "one"):
        ckpt = Checkpointer(cfg.model_copy(update={"train": cfg.train.model_copy(
            update={"run_dir": str(runs[name])})}), run.tokenizer, log=lambda msg: None)
        state, data, _ = ckpt.restore(run.state, run.shardings)
        ckpt.close()
        assert int(state.step) == 4 and data["process_count"] == (2 if name == "two" else 1)
        restored[name] = state
    leaves = jax.tree.leaves(restored["two"].params)
    assert leaves and all(x.sharding.mesh.shape["tensor"] == 2 for x in leaves)
    # equal up to float32 summation order (atol: near-zero biases; an update is ~1e-3)
    for a, b in zip(leaves, jax.tree.leaves(restored["one"].params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    fresh = jax.tree.leaves(run.state.params)
    assert any(not np.allclose(np.asarray(a), np.asarray(b))
               for a, b in zip(leaves, fresh, strict=True))


@pytest.mark.slow
def test_killing_a_process_ends_the_other_in_bounded_time_and_a_relaunch_resumes(tmp_path):
    heartbeat, steps = 4, 30
    run_dir, log_dir = tmp_path / "run", tmp_path / "launch_logs"
    # the 2 processes double as 2 slices here: a hybrid ICI (4) x DCN (2) mesh
    args = [*SAME_BATCHES, f"train.steps={steps}", "checkpoint.every=5", "mesh.dcn_data=2",
            f"distributed.heartbeat_timeout={heartbeat}"]
    proc = local_sh(run_dir, log_dir, *args, wait=False)
    try:
        deadline = time.monotonic() + 600
        # past the first checkpoint, and that one final (an async save may still be writing)
        while (max(losses(run_dir, "train/loss"), default=0) < 6
               or not (run_dir / "checkpoints" / "5").is_dir()):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        victim = int((log_dir / "process_1.pid").read_text())
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        out, _ = proc.communicate(timeout=300)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1} on 8 cpu device(s)" in out
    assert "Warning" not in out  # e.g. no DataWarning for the embedded corpus's one file
    reached = max(losses(run_dir, "train/loss"))
    assert proc.returncode != 0 and reached < steps
    assert took < heartbeat + 26, f"process 0 needed {took:.1f}s to stop"  # loaded 2-core CI
    assert "process 1 was killed by SIGKILL" in out
    assert re.search(r"process 0 (was killed by SIGABRT|exited with status 1)", out), out[-2000:]
    # Usually JAX's heartbeat check ends process 0 (FATAL_MARKER ... "stopped sending
    # heartbeats"); if process 1 died in the middle of a CPU collective, gloo's error can come
    # first (as a jaxlm error line, or gloo's own abort). Either way it is said, and fast.
    survivor = (run_dir / "logs" / "process_0.log").read_text()
    errors = f"{FATAL_MARKER}|has probably died|gloo::|Gloo [-a-z]+ failed"
    assert re.search(errors, survivor, re.IGNORECASE), survivor[-3000:]
    # ... but what process 0 showed ends with one jaxlm line: no traceback, no C++ report
    # (they are in its log), and local.sh adds no bash "Aborted ( export ... )" notes.
    shown, deadline = "", time.monotonic() + 10
    while "jaxlm: error:" not in shown and time.monotonic() < deadline:  # (its tee, a moment
        shown = (log_dir / "process_0.out").read_text()                  # after it died)
        time.sleep(0.2)
    for noise in ("Traceback", "Check failure", "terminate called", "E1", "F1"):
        assert not re.search(rf"^{noise}", shown, re.M), shown[-3000:]
    lines = shown.rstrip().splitlines()
    assert [x for x in lines if x.startswith("jaxlm: error:")] == lines[-1:], shown[-3000:]
    assert "has probably died" in lines[-1] or "died or hangs" in lines[-1], lines[-1]
    assert "Aborted" not in out and "( export" not in out

    # the same command again continues from the last complete checkpoint
    again = local_sh(run_dir, tmp_path / "launch_logs_2", *args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert CACHE_OFF in again.stdout + again.stderr  # with the warm cache of the first launch
    resumed = re.search(r"checkpoint: resumed from \S+ \(step (\d+)\)", again.stdout)
    assert resumed and 5 <= int(resumed.group(1)) <= reached, again.stdout[-3000:]
    assert max(losses(run_dir, "train/loss")) == steps
