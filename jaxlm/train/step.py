"""The jitted train, eval and predict steps, for any task (objective).

The task returns its loss as *sums* (see :mod:`jaxlm.tasks.base`). Gradients of the summed
objective are accumulated over microbatches under ``lax.scan`` and divided by the total
weight once, so 4 microbatches of B/4 give exactly the update of one batch of B.

Divergence is caught on device at every step, for the price of a few scalar ops: a loss or
gradient norm that is not finite, or a loss above ``spike_factor`` times its running average
plus ``SPIKE_MARGIN`` (from step ``WARM_STEPS``), marks the state diverged (``TrainState.health``)
and from then on the update is not applied: the parameters stay those of the last good step.
The loop reads the flag when it logs and before it saves, and stops without saving it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from jaxlm.models.trainable import Trainable, join, split
from jaxlm.sharding import Rules, activate, replicated
from jaxlm.tasks import Task
from jaxlm.train.state import TrainState

Batch = dict[str, jax.Array]
WARM_STEPS = 1  # the first loss starts the running average; spikes are tested after it
EMA = 0.98  # decay of the running loss average
SPIKE_MARGIN = 1.0  # nats: a spike is a loss above factor * average + this


def update_health(health: jax.Array, step: jax.Array, loss: jax.Array, grad_norm: jax.Array,
                  spike_factor: float | None) -> tuple[jax.Array, jax.Array]:
    """(new health, whether this step's update may be applied). health = (loss EMA, first
    diverged step or 0, its loss)."""
    ema, bad = health[0], health[1]
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    spike = jnp.asarray(False)
    if spike_factor is not None:
        spike = (step >= WARM_STEPS) & (loss > spike_factor * ema + SPIKE_MARGIN)
    newly_bad = (bad == 0) & (~finite | spike)
    bad = jnp.where(newly_bad, (step + 1).astype(jnp.float32), bad)
    ema = jnp.where(step == 0, loss, jnp.where(finite & ~spike, EMA * ema + (1 - EMA) * loss,
                                                ema))
    bad_loss = jnp.where(newly_bad, loss, health[2])
    return jnp.stack([ema, bad, bad_loss]).astype(jnp.float32), bad == 0


def _microbatches(batch: Batch, n: int) -> Batch:
    """(B, ...) → (n, B/n, ...), microbatch i = rows i, i+n, ...: each stays on its devices."""
    return {k: v.reshape(v.shape[0] // n, n, *v.shape[1:]).swapaxes(0, 1) for k, v in batch.items()}


def make_train_step(
    task: Task, tx: optax.GradientTransformation, schedule: optax.Schedule, grad_accum: int = 1,
    spike_factor: float | None = None, trainable: Trainable | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The (unjitted) train step: state, global batch → new state, metrics. A step that
    diverges (see the module docstring) leaves params and optimizer state unchanged.
    ``trainable``: only that part of the parameters is differentiated and updated (the
    optimizer state covers it alone); the rest is held fixed."""

    def loss(trained: Any, frozen: Any, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Any]:
        return task.loss_sums(join(trained, frozen), batch, rng)

    grad_fn = jax.grad(loss, has_aux=True)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng, step_rng = jax.random.split(state.rng)
        trained, frozen = split(state.params, trainable)
        if grad_accum == 1:
            grads, sums = grad_fn(trained, frozen, batch, step_rng)
        else:
            def body(carry, xs):
                g_acc, s_acc = carry
                mb, i = xs
                g, s = grad_fn(trained, frozen, mb, jax.random.fold_in(step_rng, i))
                return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s)), None

            zeros = jax.tree.map(jnp.zeros_like, trained)
            (grads, sums), _ = jax.lax.scan(
                body, (zeros, task.zero_sums()),
                (_microbatches(batch, grad_accum), jnp.arange(grad_accum)))
        denom = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state.opt_state, trained)
        new_trained = optax.apply_updates(trained, updates)
        metrics = {**task.train_metrics(sums), "grad_norm": optax.tree.norm(grads)}
        health, ok = update_health(state.health, state.step, metrics["loss"],
                                   metrics["grad_norm"], spike_factor)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731 - diverged: no update
        params = join(jax.tree.map(keep, new_trained, trained), frozen)
        opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        metrics.update(param_norm=optax.tree.norm(params), lr=schedule(state.step))
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
                         health=health)
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


def _jit_on_params(fn: Callable, param_shardings: Any, batch_sharding: NamedSharding,
                   mesh: Mesh, rules: Rules, out_sharding: NamedSharding) -> Callable:
    jitted = jax.jit(fn, in_shardings=(param_shardings, batch_sharding),
                     out_shardings=out_sharding)

    def run(params: Any, batch: Batch) -> Any:
        with activate(mesh, rules):
            return jitted(params, batch)

    return run


def make_eval_step(
    task: Task, param_shardings: Any, batch_sharding: NamedSharding, mesh: Mesh, rules: Rules
) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Jitted eval: params (sharded as ``param_shardings``), batch → the task's loss sums
    (add them up, then ``task.eval_metrics``)."""
    return _jit_on_params(lambda p, b: task.loss_sums(p, b)[1], param_shardings,
                          batch_sharding, mesh, rules, replicated(mesh))


def make_predict_step(
    task: Any, param_shardings: Any, batch_sharding: NamedSharding, mesh: Mesh, rules: Rules
) -> Callable[[Any, Batch], jax.Array]:
    """Jitted ``task.predict`` (probabilities per row), gathered to every process."""
    return _jit_on_params(task.predict, param_shardings, batch_sharding, mesh, rules,
                          replicated(mesh))
