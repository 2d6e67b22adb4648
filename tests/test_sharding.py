"""Sharded training equals single-device training; grad accumulation equals a big batch."""

import jax
import numpy as np
import pytest

from jaxlm.config import load_config
from jaxlm.runtime.hardware import resolve_auto
from jaxlm.sharding import batch_sharding, logical_rules, make_mesh
from jaxlm.tasks import CausalLM
from jaxlm.train.optim import lr_schedule, make_optimizer
from jaxlm.train.state import create_train_state, shapes_of
from jaxlm.train.step import jit_train_step, make_train_step

SEQ, BATCH, VOCAB = 16, 16, 128


def batches(n: int):
    rng = np.random.default_rng(0)
    for _ in range(n):
        toks = rng.integers(0, VOCAB, (BATCH, SEQ + 1)).astype(np.int32)
        seg = np.ones((BATCH, SEQ), np.int32)
        seg[:, 10:] = 2
        seg[::3, 14:] = 0  # some padding
        pos = np.concatenate([np.arange(10), np.arange(SEQ - 10)])[None].repeat(BATCH, 0)
        yield dict(inputs=toks[:, :-1], targets=toks[:, 1:], segment_ids=seg,
                   positions=pos.astype(np.int32), weights=(seg > 0).astype(np.float32))


def train3(mesh_shape, family="gpt2", accum=1, batch_size=BATCH):
    d, f, t = mesh_shape
    cfg = load_config(None, [
        f"mesh.data={d}", f"mesh.fsdp={f}", f"mesh.tensor={t}", f"model.family={family}",
        "model.d_model=64", "model.n_heads=8", "model.n_layers=2", f"model.vocab_size={VOCAB}",
        f"model.max_seq_len={SEQ}", f"data.seq_len={SEQ}", f"train.global_batch={batch_size}",
        f"train.grad_accum={accum}", "model.dtype=float32", "train.steps=10",
        "train.warmup_steps=1",
    ])
    mesh = make_mesh(cfg, jax.devices()[: d * f * t])
    rules = logical_rules(cfg.mesh)
    task, tx = CausalLM(resolve_auto(cfg.model)), make_optimizer(cfg.train)
    state, shardings = create_train_state(task, tx, mesh, rules, seed=0)
    init = jax.device_get(state.params)
    bs = batch_sharding(mesh, rules)
    step = jit_train_step(make_train_step(task, tx, lr_schedule(cfg.train), accum), shardings,
                          bs, mesh, rules)
    losses = []
    for b in batches(3):
        state, m = step(state, jax.device_put(b, bs))
        losses.append(float(m["loss"]))
    return losses, init, jax.device_get(state.params), state


@pytest.fixture(scope="module")
def reference():
    return {fam: train3((1, 1, 1), fam) for fam in ("gpt2", "llama")}


@pytest.mark.parametrize("mesh_shape", [pytest.param((8, 1, 1), marks=pytest.mark.slow),
                                        pytest.param((1, 8, 1), marks=pytest.mark.slow),
                                        (1, 1, 8), (2, 2, 2)])
def test_sharded_equals_single_device(reference, mesh_shape):
    ref_losses, ref_init, ref_params, _ = reference["gpt2"]
    losses, init, params, state = train3(mesh_shape)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, ref_params)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), params, init)
    assert all(jax.tree.leaves(changed)), "every parameter is updated"
    n = int(np.prod(mesh_shape))
    if mesh_shape[1] * mesh_shape[2] > 1:  # FSDP / tensor: parameters really are spread out
        sharded = [x for x in jax.tree.leaves(state.params) if len(x.sharding.device_set) == n
                   and not x.sharding.is_fully_replicated]
        assert sharded


def test_llama_sharded_equals_single_device(reference):
    ref_losses = reference["llama"][0]
    np.testing.assert_allclose(train3((2, 2, 2), "llama")[0], ref_losses, rtol=1e-5)


def test_grad_accumulation_equals_one_big_batch(reference):
    ref_losses, _, ref_params, _ = reference["gpt2"]
    losses, _, params, _ = train3((1, 1, 1), accum=4)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, ref_params)


def test_given_parameters_are_taken_and_only_the_rest_is_drawn():
    """``create_train_state(given=...)``: given leaves as they are, the others as a plain
    initialisation draws them (same seed)."""
    cfg = load_config(None, ["model.d_model=64", "model.n_heads=8", "model.n_layers=2",
                             f"model.vocab_size={VOCAB}", f"model.max_seq_len={SEQ}",
                             f"data.seq_len={SEQ}", "model.dtype=float32", "mesh.data=2"])
    mesh = make_mesh(cfg, jax.devices()[:2])
    rules = logical_rules(cfg.mesh)
    task, tx = CausalLM(resolve_auto(cfg.model)), make_optimizer(cfg.train)
    plain, shardings = create_train_state(task, tx, mesh, rules, seed=3)
    ones = jax.tree.map(lambda x, s: jax.device_put(np.ones(x.shape, x.dtype), s),
                        plain.params["backbone"], shardings.params["backbone"])
    given = {**shapes_of(plain.params), "backbone": ones}
    state, _ = create_train_state(task, tx, mesh, rules, seed=3, given=given)
    jax.tree.map(lambda x: np.testing.assert_array_equal(x, 1.0), state.params["backbone"])
    for name in set(plain.params) - {"backbone"}:
        jax.tree.map(np.testing.assert_array_equal, state.params[name], plain.params[name])
    assert int(state.step) == 0 and jax.tree.structure(state) == jax.tree.structure(plain)
