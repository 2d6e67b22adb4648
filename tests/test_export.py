"""``jaxlm export`` (safetensors, f32 or bf16) and ``load_params`` from a run, a checkpoint
step or an export, onto another mesh; a model that does not fit is one clear error."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_checkpoint import DATA, build, checkpointer, make_cfg

from jaxlm.checkpoint.checkpointer import CheckpointError, abstract_like
from jaxlm.checkpoint.export import export, load_params


def test_export_and_load_params(tmp_path):
    src = make_cfg(tmp_path / "run", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    state, _ = build(src, 8)
    ck = checkpointer(src)
    ck.save(5, state, DATA)
    ck.close()
    run = tmp_path / "run"
    export(run, tmp_path / "f32")
    export(run, tmp_path / "bf16", dtype="bfloat16", step=5)
    assert {p.name for p in (tmp_path / "f32").iterdir()} == {
        "model.safetensors", "config.json", "tokenizer.json"}
    assert (tmp_path / "bf16" / "model.safetensors").stat().st_size < (
        tmp_path / "f32" / "model.safetensors").stat().st_size * 0.6

    dst = make_cfg(tmp_path / "run", "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=1")
    other, shardings = build(dst, 4, seed=1)
    target = abstract_like(other.params, shardings.params)
    expected = jax.tree.map(np.asarray, state.params)
    for path in (run, run / "checkpoints" / "5", tmp_path / "f32"):
        params = load_params(path, target)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), expected)
        emb = params["backbone"]["wte"]["embedding"]
        assert emb.sharding == shardings.params["backbone"]["wte"]["embedding"]
    params = load_params(tmp_path / "bf16", target)
    assert params["backbone"]["wte"]["embedding"].dtype == np.float32
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-6),
                 jax.tree.map(np.asarray, params), expected)

    wrong = make_cfg(tmp_path / "x", "model.d_model=64")
    other, shardings = build(wrong)
    for path in (run, tmp_path / "f32"):
        with pytest.raises(CheckpointError, match=r"does not fit this model \(20 differences\): "
                                                  r"backbone/block_0/attn/key/bias: checkpoint "
                                                  r"\(4, 8\) vs"):
            load_params(path, abstract_like(other.params, shardings.params))
