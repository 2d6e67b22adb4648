"""Checkpointer in one process: items, keep policy, async safety, atomic finalize, resharding,
mismatch and config errors, corrupt and full-disk handling (export: ``test_export.py``).

Two tests run this file as a script in a child process (``worker_*`` below): one dies by
SIGKILL in the middle of Orbax's finalize, one writes under a tiny file-size limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxlm.checkpoint.checkpointer import (
    Checkpointer,
    CheckpointError,
    CheckpointWarning,
    open_manager,
    state_tree,
)
from jaxlm.config import Config, load_config
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.errors import TrainingError
from jaxlm.runtime.hardware import resolve_auto
from jaxlm.sharding import logical_rules, make_mesh
from jaxlm.tasks import CausalLM
from jaxlm.train.optim import make_optimizer
from jaxlm.train.state import TrainState, healthy, state_shardings

ROOT = Path(__file__).parents[1]
TINY = ROOT / "configs" / "pretrain" / "tiny.yaml"
TOKENIZER = load_tokenizer("default")
DATA = {"batches": 3, "note": "stand-in for Pipeline.state_dict()"}


def make_cfg(run_dir: Path, *overrides: str) -> Config:
    return load_config(TINY, [
        "model.n_layers=1", "model.d_model=32", "model.vocab_size=256", "model.max_seq_len=16",
        "data.seq_len=16", f"train.run_dir={run_dir}", "train.steps=10", *overrides])


def build(cfg: Config, n_devices: int = 1, seed: int = 0) -> tuple[Any, Any]:
    """(state, shardings) on the first ``n_devices`` devices, mesh as in ``cfg``.

    The state has the train state's exact tree, shapes, dtypes and shardings but random
    values from ``seed`` (traced with ``jax.eval_shape``, never compiled: fast tests).
    """
    mesh = make_mesh(cfg, jax.devices()[:n_devices])
    task, tx = CausalLM(resolve_auto(cfg.model)), make_optimizer(cfg.train)
    shardings = state_shardings(task, tx, mesh, logical_rules(cfg.mesh))

    def init() -> TrainState:
        params = nn.unbox(task.init(jax.random.PRNGKey(0)))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, health=healthy(),
                          opt_state=tx.init(params), rng=jax.random.PRNGKey(0))

    rng = np.random.default_rng(seed)

    def fill(x: jax.ShapeDtypeStruct, sharding: Any) -> jax.Array:
        if np.issubdtype(x.dtype, np.floating):
            value = rng.standard_normal(x.shape).astype(x.dtype)
        else:
            value = rng.integers(0, 1000, x.shape).astype(x.dtype)
        return jax.device_put(value, sharding)

    return jax.tree.map(fill, jax.eval_shape(init), shardings), shardings


def checkpointer(cfg: Config) -> Checkpointer:
    return Checkpointer(cfg, TOKENIZER, log=lambda msg: None)


def host(tree: Any) -> Any:
    return jax.tree.map(np.asarray, state_tree(tree) if hasattr(tree, "params") else tree)


def assert_same(a: Any, b: Any) -> None:
    jax.tree.map(np.testing.assert_array_equal, host(a), host(b))


# ------------------------------------------------------------------------ save / restore


def test_items_round_trip_and_resume_auto(tmp_path):
    cfg = make_cfg(tmp_path)
    state, shardings = build(cfg)
    ck = checkpointer(cfg)
    assert ck.save(2, state, DATA) and not ck.save(2, state, DATA)  # a step is saved once
    ck.close()
    step_dir = tmp_path / "checkpoints" / "2"
    assert {p.name for p in step_dir.iterdir()} >= {"state", "data", "config", "tokenizer"}

    other, _ = build(cfg, seed=1)  # different values: the restore must replace them
    restored, data, _ = checkpointer(cfg).restore(other, shardings)
    assert_same(restored, state)
    assert data == {"process_count": 1, "states": [DATA]}
    items = open_manager(tmp_path / "checkpoints").restore(2, args=ocp.args.Composite(
        config=ocp.args.JsonRestore(), tokenizer=ocp.args.JsonRestore()))
    assert items.config == cfg.to_dict()
    assert items.tokenizer["tokenizer"] == "default" and len(items.tokenizer["sha256"]) == 64


def test_fresh_start_and_resume_never(tmp_path):
    cfg = make_cfg(tmp_path, "checkpoint.resume=never")
    state, shardings = build(cfg)
    ck = checkpointer(cfg)
    assert ck.restore(state, shardings) == (state, None, None)
    ck.save(1, state, DATA, wait=True)
    ck.close()
    with pytest.raises(CheckpointError, match="already holds checkpoints.*resume=never"):
        checkpointer(cfg).restore(state, shardings)


def test_keep_last_k_plus_every_mth_and_due(tmp_path):
    cfg = make_cfg(tmp_path, "checkpoint.keep=2", "checkpoint.keep_period=4",
                   "checkpoint.every=3", "train.steps=10")
    state, _ = build(cfg)
    ck = checkpointer(cfg)
    assert [s for s in range(1, 11) if ck.due(s, 10)] == [3, 6, 9, 10]
    for step in range(1, 10):
        ck.save(step, state, DATA)
    ck.close()
    assert sorted(open_manager(tmp_path / "checkpoints").all_steps()) == [4, 8, 9]


def test_async_save_is_not_disturbed_by_donated_buffers(tmp_path):
    """The train step donates the state; an async save must have copied it already."""
    cfg = make_cfg(tmp_path, "checkpoint.async_save=true")
    state, shardings = build(cfg)
    expected = host(state)
    ck = checkpointer(cfg)
    ck.save(1, state, DATA)
    state = jax.jit(lambda s: jax.tree.map(lambda x: x * 0 + 7, s), donate_argnums=0)(state)
    ck.close()
    restored, *_ = checkpointer(cfg).restore(state, shardings)
    jax.tree.map(np.testing.assert_array_equal, host(restored), expected)


@pytest.mark.parametrize("mesh_to, n_to", [((1, 4, 1), 4), ((1, 1, 1), 1)])
def test_restore_onto_another_mesh(tmp_path, mesh_to, n_to):
    src = make_cfg(tmp_path, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    state, _ = build(src, 8)
    ck = checkpointer(src)
    ck.save(3, state, DATA)
    ck.close()
    d, f, t = mesh_to
    dst = make_cfg(tmp_path, f"mesh.data={d}", f"mesh.fsdp={f}", f"mesh.tensor={t}")
    other, shardings = build(dst, n_to, seed=1)
    restored, *_ = checkpointer(dst).restore(other, shardings)
    assert_same(restored, state)
    for x, s in zip(jax.tree.leaves(state_tree(restored)), jax.tree.leaves(state_tree(shardings)),
                    strict=True):
        assert x.sharding == s
    assert len(restored.params["backbone"]["wte"]["embedding"].sharding.device_set) == n_to


# -------------------------------------------------------------------------- bad input


def test_other_architecture_lists_mismatched_paths(tmp_path):
    cfg = make_cfg(tmp_path)
    state, _ = build(cfg)
    ck = checkpointer(cfg)
    ck.save(1, state, DATA)
    ck.close()
    wider = make_cfg(tmp_path, "model.d_model=64")
    other, shardings = build(wider)
    with pytest.raises(CheckpointError, match=r"model\.d_model=32 \(checkpoint\) vs 64.*"
                                              r"allow_config_change=true"):
        checkpointer(wider).restore(other, shardings)
    expected = {"model.d_model=64": "params/backbone/block_0/attn/key/bias: checkpoint (4, 8) "
                                    "vs model (4, 16); params/backbone/block_0/attn/key/kernel: "
                                    "checkpoint",
                "model.n_layers=2": "(48 differences): params/backbone/block_1/attn/key/bias "
                                    "(4, 8): missing from the checkpoint; "
                                    "params/backbone/block_1/attn/key/kernel"}
    for change, listed in expected.items():
        allowed = make_cfg(tmp_path, change, "checkpoint.allow_config_change=true")
        other, shardings = build(allowed)
        with pytest.raises(CheckpointError) as err:
            checkpointer(allowed).restore(other, shardings)
        msg = str(err.value)
        assert "\n" not in msg and "does not fit this model" in msg
        assert listed in msg and "more" in msg


def test_incompatible_config_is_refused_unless_allowed(tmp_path):
    cfg = make_cfg(tmp_path)
    state, shardings = build(cfg)
    ck = checkpointer(cfg)
    ck.save(1, state, DATA)
    ck.close()
    changed = make_cfg(tmp_path, "train.global_batch=16", "model.dropout=0.1", "train.lr=1e-4")
    with pytest.raises(CheckpointError) as err:
        checkpointer(changed).restore(state, shardings)
    assert "train.global_batch=8 (checkpoint) vs 16" in str(err.value)
    assert "dropout" not in str(err.value) and "lr" not in str(err.value)
    allowed = make_cfg(tmp_path, "train.global_batch=16", "checkpoint.allow_config_change=true")
    restored, *_ = checkpointer(allowed).restore(state, shardings)
    assert int(restored.step) == int(state.step)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    cfg = make_cfg(tmp_path)
    state, shardings = build(cfg)
    later = state.replace(step=state.step + 5)
    ck = checkpointer(cfg)
    ck.save(2, state, DATA)
    ck.save(4, later, DATA)
    ck.close()
    for f in (tmp_path / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    ck = checkpointer(cfg)
    with pytest.warns(CheckpointWarning, match=r"checkpoints/4 is unreadable.*using step 2"):
        restored, *_ = ck.restore(state, shardings)
    assert int(restored.step) == int(state.step)
    assert list((tmp_path / "checkpoints_corrupt").iterdir())  # moved aside, not deleted
    assert ck.save(4, later, DATA, wait=True)  # the step can be written again
    ck.close()


def test_unwritable_checkpoint_directory(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the directory should be")
    with pytest.raises(CheckpointError, match="cannot write to the checkpoint directory"):
        checkpointer(make_cfg(tmp_path))


def test_resume_from_a_path(tmp_path):
    first = make_cfg(tmp_path / "a")
    state, shardings = build(first)
    ck = checkpointer(first)
    ck.save(2, state, DATA)
    ck.save(3, state.replace(step=state.step + 3), DATA)
    ck.close()
    second = make_cfg(tmp_path / "b", f"checkpoint.resume={tmp_path / 'a' / 'checkpoints' / '2'}")
    restored, *_ = checkpointer(second).restore(state, shardings)
    assert int(restored.step) == int(state.step)  # step 2's, not the newer step 3's
    missing = make_cfg(tmp_path / "c", f"checkpoint.resume={tmp_path / 'nowhere'}")
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpointer(missing).restore(state, shardings)


def test_data_state_of_another_stream(tmp_path):
    cfg = make_cfg(tmp_path)

    class Pipe:
        loaded = None

        def load_state_dict(self, s: dict) -> None:
            if s.get("seed") != 0:
                raise ValueError("data pipeline state was saved with seed=1 but this run has 0")
            self.loaded = s

    pipe = Pipe()
    checkpointer(cfg).load_data_state(pipe, {"process_count": 1, "states": [{"seed": 0}]})
    assert pipe.loaded == {"seed": 0}
    with pytest.raises(CheckpointError, match="seed=1.*allow_config_change"):
        checkpointer(cfg).load_data_state(pipe, {"process_count": 1, "states": [{"seed": 1}]})
    with pytest.warns(CheckpointWarning, match="saved by 2 process"):
        checkpointer(cfg).load_data_state(Pipe(), {"process_count": 2, "states": [{}, {}]})


def _run_worker(name: str, run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "JAX_PLATFORMS": "cpu", "USE_TORCH": "0"}
    return subprocess.run([sys.executable, __file__, name, str(run_dir)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def test_save_killed_during_finalize_is_never_taken_as_complete(tmp_path):
    proc = _run_worker("kill_at_finalize", tmp_path)
    assert proc.returncode == -9, proc.stderr[-3000:]
    ckpts = tmp_path / "checkpoints"
    leftovers = [p.name for p in ckpts.iterdir() if not p.name.isdigit()]
    assert leftovers and all(n.startswith("2.orbax-checkpoint-tmp") for n in leftovers)
    assert any((ckpts / leftovers[0]).rglob("*"))  # the data was written, just not committed
    assert open_manager(ckpts).all_steps() == [1]
    cfg = make_cfg(tmp_path)
    state, shardings = build(cfg)
    with pytest.warns(CheckpointWarning, match="discarded 1 unfinished save"):
        ck = checkpointer(cfg)  # a writable manager clears the leftovers
    restored, *_ = ck.restore(build(cfg, seed=1)[0], shardings)
    assert_same(restored, state)  # step 1's state, not the half-committed step 2's
    assert ck.save(2, state, DATA, wait=True)
    ck.close()
    assert sorted(p.name for p in ckpts.iterdir()) == ["1", "2"]


@pytest.mark.parametrize("async_save", ["true", "false"])
def test_full_disk_is_a_clear_error_and_keeps_saved_checkpoints(tmp_path, async_save):
    proc = _run_worker(f"full_disk_{async_save}", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    msg = proc.stdout.strip().splitlines()[-1]
    assert msg.startswith("TrainingError: could not write checkpoint step 2 to ")
    assert "File too large" in msg and "latest complete: step 1" in msg
    assert open_manager(tmp_path / "checkpoints").all_steps() == [1]  # keep=1, yet not deleted
    cfg = make_cfg(tmp_path)
    state, shardings = build(cfg)
    with pytest.warns(CheckpointWarning, match="unfinished save.*interrupted or failed"):
        ck = checkpointer(cfg)
    restored, *_ = ck.restore(build(cfg, seed=1)[0], shardings)
    assert_same(restored, state)


# ------------------------------------------------------------------ child-process workers


def worker_kill_at_finalize(run_dir: str) -> None:
    """Save step 1, then die by SIGKILL at the moment Orbax would commit step 2."""
    import signal

    from orbax.checkpoint._src.path import atomicity

    cfg = make_cfg(Path(run_dir), "checkpoint.async_save=true")
    state, _ = build(cfg)
    ck = checkpointer(cfg)
    ck.save(1, state, DATA, wait=True)

    async def die(self: Any, *args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    atomicity.AtomicRenameTemporaryPath.finalize = die  # type: ignore[method-assign]
    ck.save(2, state.replace(step=state.step + 1), DATA, wait=True)


def worker_full_disk(run_dir: str, async_save: str) -> None:
    """Save step 1, then save under a 100-byte file-size limit: writes fail with EFBIG."""
    import resource
    import signal

    cfg = make_cfg(Path(run_dir), "checkpoint.keep=1", f"checkpoint.async_save={async_save}")
    state, _ = build(cfg)
    ck = checkpointer(cfg)
    ck.save(1, state, DATA, wait=True)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
    try:
        ck.save(2, state.replace(step=state.step + 1), DATA)
        ck.save(3, state.replace(step=state.step + 2), DATA)
        ck.close()
    except TrainingError as e:
        print(f"TrainingError: {e}", flush=True)


if __name__ == "__main__":
    name, arg = sys.argv[1], sys.argv[2]
    if name == "kill_at_finalize":
        worker_kill_at_finalize(arg)
    else:
        worker_full_disk(arg, name.rsplit("_", 1)[1])
