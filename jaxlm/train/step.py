"""The jitted train and eval steps: token-level cross-entropy, grad accumulation, AdamW.

The loss is the mean cross-entropy over target tokens whose weight is 1 (padding and, for
masked-LM, unmasked positions weigh 0). Gradients of the *summed* loss are accumulated over
microbatches under ``lax.scan`` and divided by the total weight once, so 4 microbatches of
B/4 give exactly the update of one batch of B.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from jaxlm.config import Config
from jaxlm.sharding import Rules, activate, replicated
from jaxlm.train.state import TrainState

Batch = dict[str, jax.Array]  # inputs, targets, segment_ids, positions: (B, L) int32; weights f32


def loss_sums(
    model: nn.Module, params: Any, batch: Batch, z_loss: float, rng: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Summed weighted NLL (+ z-loss) over a batch, and the sums needed to average it."""
    logits = model.apply(
        {"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"],
        train=rng is not None, rngs={"dropout": rng} if rng is not None else {},
    )  # (B, L, V) f32
    logz = jax.nn.logsumexp(logits, axis=-1)  # (B, L)
    target_logit = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    w = batch["weights"]
    nll = jnp.sum((logz - target_logit) * w)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["targets"]) * w)
    zl = jnp.sum(jnp.square(logz) * w)
    objective = nll + z_loss * zl
    return objective, {"nll": nll, "weight": jnp.sum(w), "z": zl, "correct": correct}


def _microbatches(batch: Batch, n: int) -> Batch:
    """(B, L) → (n, B/n, L), microbatch i = rows i, i+n, ...: each stays on its devices."""
    return {k: v.reshape(v.shape[0] // n, n, *v.shape[1:]).swapaxes(0, 1) for k, v in batch.items()}


def make_train_step(
    cfg: Config, model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The (unjitted) train step: state, global batch → new state, metrics."""
    accum, z_loss = cfg.train.grad_accum, cfg.train.z_loss
    grad_fn = jax.grad(lambda p, b, r: loss_sums(model, p, b, z_loss, r), has_aux=True)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng, step_rng = jax.random.split(state.rng)
        use_rng = step_rng if cfg.model.dropout > 0 else None
        if accum == 1:
            grads, sums = grad_fn(state.params, batch, use_rng)
        else:
            def body(carry, xs):
                g_acc, s_acc = carry
                mb, i = xs
                r = None if use_rng is None else jax.random.fold_in(use_rng, i)
                g, s = grad_fn(state.params, mb, r)
                return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            zero_sums = {k: jnp.zeros((), jnp.float32) for k in ("nll", "weight", "z", "correct")}
            (grads, sums), _ = jax.lax.scan(
                body, (zeros, zero_sums), (_microbatches(batch, accum), jnp.arange(accum)))
        denom = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": sums["nll"] / denom,
            "z_loss": sums["z"] / denom,
            "accuracy": sums["correct"] / denom,
            "tokens": sums["weight"],
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "lr": schedule(state.step),
        }
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        return new, metrics

    return step


def jit_train_step(
    step: Callable, shardings: TrainState, batch_sharding: NamedSharding, mesh: Mesh, rules: Rules
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """``jax.jit`` with in/out shardings and the state donated (updated in place)."""
    jitted = jax.jit(
        step, in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, replicated(mesh)), donate_argnums=(0,),
    )

    def run(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        with activate(mesh, rules):
            return jitted(state, batch)

    run.jitted = jitted  # type: ignore[attr-defined]  # for .lower() (memory analysis)
    return run


def make_eval_step(
    model: nn.Module, shardings: TrainState, batch_sharding: NamedSharding, mesh: Mesh, rules: Rules
) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Jitted eval: params, batch → summed nll / weight / correct (average on the host)."""
    jitted = jax.jit(
        lambda p, b: loss_sums(model, p, b, 0.0)[1],
        in_shardings=(shardings.params, batch_sharding), out_shardings=replicated(mesh),
    )

    def run(params: Any, batch: Batch) -> dict[str, jax.Array]:
        with activate(mesh, rules):
            return jitted(params, batch)

    return run
