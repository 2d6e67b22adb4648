"""Every preset builds: its sharded train step lowers on 8 devices (large ones stay abstract)."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxlm.config import load_config
from jaxlm.models import param_count
from jaxlm.runtime.hardware import resolve_auto
from jaxlm.sharding import activate, batch_sharding, logical_rules, make_mesh
from jaxlm.tasks import CausalLM, pretraining_task
from jaxlm.train.optim import decay_mask, lr_schedule, make_optimizer
from jaxlm.train.state import create_train_state, is_abstract
from jaxlm.train.step import jit_train_step, make_train_step

PRESETS = sorted((Path(__file__).parents[1] / "configs" / "pretrain").glob("*.yaml"))
EXPECTED_PARAMS = {"tiny": (0.2e6, 1e6), "small": (15e6, 25e6), "modern_en": (15e6, 25e6),
                   "modern_bert": (5e6, 6e6), "modern_gpt": (5e6, 6e6),
                   "gpt2_124m": (120e6, 130e6), "llama_1b": (1.0e9, 1.3e9)}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_train_step_lowers_on_8_devices(path):
    cfg = load_config(path, ["train.global_batch=16", "train.grad_accum=1"])
    lo, hi = EXPECTED_PARAMS[path.stem]
    assert lo <= param_count(cfg.model) <= hi
    mesh = make_mesh(cfg)
    rules = logical_rules(cfg.mesh)
    cfg = cfg.model_copy(update={"model": resolve_auto(cfg.model)})
    task, tx = pretraining_task(cfg), make_optimizer(cfg.train)  # (masked LM for BERT)
    state, shardings = create_train_state(task, tx, mesh, rules, 0, abstract=True)
    assert is_abstract(state)
    bs = batch_sharding(mesh, rules)
    shape = (cfg.train.global_batch, cfg.data.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "weights" else jnp.int32,
                                     sharding=bs)
             for k in ("inputs", "targets", "segment_ids", "positions", "weights")}
    step = jit_train_step(make_train_step(task, tx, lr_schedule(cfg.train)), shardings, bs,
                          mesh, rules)
    with activate(mesh, rules):
        lowered = step.jitted.lower(state, batch)
    assert "loss" in lowered.out_info[1]


def test_weight_decay_skips_parameters_by_name_or_by_rank():
    """The default mask skips norms and biases by module/leaf name; ``vectors`` skips every
    parameter of rank < 2 whatever its name (nanoGPT's rule), so embeddings still decay."""
    cfg = load_config(None, ["model.n_layers=1"])
    task = CausalLM(resolve_auto(cfg.model))
    params = nn.unbox(jax.eval_shape(task.init, jax.random.PRNGKey(0)))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for exclude in (["norms", "biases"], ["vectors"]):
        mask = dict(jax.tree_util.tree_flatten_with_path(decay_mask(params, exclude))[0])
        for path, leaf in flat:
            name = jax.tree_util.keystr(path)
            if exclude == ["vectors"]:
                assert mask[path] == (len(leaf.shape) >= 2), name
            else:
                assert mask[path] == ("norm" not in name and "bias" not in name), name
        assert any(mask[p] for p, _ in flat if "wte" in jax.tree_util.keystr(p))
