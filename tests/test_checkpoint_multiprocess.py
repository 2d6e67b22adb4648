"""Two real processes (jax.distributed on 127.0.0.1, 4 CPU devices each, mesh (2, 2, 2)):
SIGTERM to one of them stops both at the same step with one checkpoint; that checkpoint
restores in both, and then in this single process onto (1, 4, 1) and onto one device.

This file is also the worker: ``python tests/test_checkpoint_multiprocess.py PID PORT DIR``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "pretrain" / "tiny.yaml")
ARGS = ["model.n_layers=1", "data.seq_len=32", "train.steps=40", "logging.every=1",
        "checkpoint.every=100", "train.sample_tokens=0", "data.eval=null",
        "logging.tensorboard=false", "logging.progress=false", "logging.memory_summary=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        out.update(flat(v, key) if isinstance(v, dict) else {key: np.asarray(v)})
    return out


@pytest.mark.slow
def test_two_processes_preempt_together_and_reshard_into_one(tmp_path):
    from test_checkpoint import build

    from jaxlm.checkpoint.checkpointer import Checkpointer, CheckpointWarning
    from jaxlm.config import load_config
    from jaxlm.data.tokenizer import load_tokenizer

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu", "USE_TORCH": "0",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, __file__, str(i), port, str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=ROOT) for i in range(2)]
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 400
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            "\n".join(p.communicate()[1][-2000:] for p in procs if p.poll() is not None)
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGTERM)  # only process 1 is preempted
    results = []
    for p in procs:
        out, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(next(x for x in out.splitlines()
                                        if x.startswith("RESULT "))[7:]))
    step = results[0]["steps"]
    assert all(r["preempted"] and r["steps"] == step for r in results), results
    assert step < 40 and (tmp_path / "checkpoints" / str(step) / "state").is_dir()
    saved = dict(np.load(tmp_path / "params.npz", allow_pickle=False))
    assert results[0]["restored_step"] == step and results[0]["data_processes"] == 2

    tokenizer = load_tokenizer("default")
    for mesh, n in [((1, 4, 1), 4), ((1, 1, 1), 1)]:
        cfg = load_config(TINY, [*ARGS, f"train.run_dir={tmp_path}", f"mesh.data={mesh[0]}",
                                 f"mesh.fsdp={mesh[1]}", f"mesh.tensor={mesh[2]}"])
        state, shardings = build(cfg, n, seed=1)
        ck = Checkpointer(cfg, tokenizer, log=lambda msg: None)
        restored, data, _ = ck.restore(state, shardings)
        with pytest.warns(CheckpointWarning, match="saved by 2 process"):
            ck.load_data_state(None, data)
        ck.close()
        assert int(restored.step) == step
        got = flat(restored.params)
        assert got.keys() == saved.keys()
        for k, v in got.items():
            np.testing.assert_array_equal(v, saved[k], err_msg=k)
        assert restored.params["backbone"]["wte"]["embedding"].sharding == (
            shardings.params["backbone"]["wte"]["embedding"])


def worker(pid: int, port: str, run_dir: str) -> None:
    """Train until preempted, then restore that checkpoint in both processes; process 0
    writes the gathered parameters to ``params.npz``."""
    import jax

    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    from jax.experimental import multihost_utils

    from jaxlm.checkpoint.checkpointer import Checkpointer
    from jaxlm.config import load_config
    from jaxlm.train.pretrain import setup, train

    cfg = load_config(TINY, [*ARGS, f"train.run_dir={run_dir}", "mesh.data=2", "mesh.fsdp=2",
                             "mesh.tensor=2"])
    result = train(cfg)
    run = setup(cfg)
    ck = Checkpointer(cfg, run.tokenizer, log=lambda msg: None)
    state, data, _ = ck.restore(run.state, run.shardings)
    ck.close()
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if pid == 0:
        np.savez(Path(run_dir) / "params.npz", **flat(params))
    result.update(restored_step=int(state.step), data_processes=data["process_count"])
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
