"""The optimizers: optax AdamW with warmup + cosine decay, clipping and a weight-decay mask
(pretraining), and its fine-tuning variant with per-group learning rates (head lr, layer-wise
decay) and an optionally frozen backbone."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxlm.config import FinetuneConfig, TrainConfig


def lr_schedule(t: TrainConfig) -> optax.Schedule:
    """Linear warmup to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    warmup = min(t.warmup_steps, t.steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.lr, warmup_steps=warmup,
        decay_steps=max(t.steps, warmup + 1), end_value=t.lr * t.min_lr_ratio,
    )


def _path_names(path: tuple) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def decay_mask(params: Any, exclude: list[str]) -> Any:
    """True for parameters that get weight decay. ``exclude`` holds categories:
    'norms' (any module named *norm*), 'biases' (leaves named bias), 'embeddings'
    (embedding tables: wte, wpe), 'vectors' (any leaf of rank < 2, whatever its name)."""

    def decays(path: tuple, leaf: Any) -> bool:
        names = _path_names(path)
        if "vectors" in exclude and len(getattr(leaf, "shape", ())) < 2:
            return False
        if "norms" in exclude and any("norm" in n for n in names[:-1]):
            return False
        if "biases" in exclude and names[-1] == "bias":
            return False
        if "embeddings" in exclude and names[-1] == "embedding":
            return False
        return True

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(t: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (optional) followed by AdamW on the schedule above."""
    adamw = optax.adamw(
        learning_rate=lr_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps,
        weight_decay=t.weight_decay, mask=lambda p: decay_mask(p, list(t.decay_exclude)),
    )
    if t.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(t.clip_norm), adamw)


# ---------------------------------------------------------------------------- fine-tuning


def finetune_schedule(total_steps: int, warmup_ratio: float) -> optax.Schedule:
    """Multiplier of every group's peak lr: linear warmup to 1, then linear decay to 0."""
    warmup = min(int(round(warmup_ratio * total_steps)), max(total_steps - 1, 0))
    return optax.join_schedules(
        [optax.linear_schedule(0.0, 1.0, max(warmup, 1)),
         optax.linear_schedule(1.0, 0.0, max(total_steps - warmup, 1))], [warmup])


def layer_of(path: tuple, n_layers: int) -> int | None:
    """Depth of a backbone parameter for layer-wise lr decay: embeddings 0, block i → i + 1,
    the final norm n_layers + 1; None for a scanned stack (handled per slice)."""
    names = _path_names(path)
    for n in names:
        if n.startswith("block_"):
            return int(n.split("_")[1]) + 1
        if n == "blocks":
            return None
    return n_layers + 1 if "final_norm" in names else 0


def lr_scales(params: Any, lr: float, head_lr: float, decay: float, n_layers: int) -> Any:
    """Peak learning rate of every parameter: ``head_lr`` for the head, and ``lr`` decayed
    layer-wise for the backbone (``lr * decay^(n_layers + 1 - depth)``)."""

    def scale(path: tuple, x: Any) -> Any:
        if _path_names(path)[0] != "backbone":
            return jnp.full((), head_lr, jnp.float32)
        depth = layer_of(path, n_layers)
        if depth is None:  # nn.scan stack: (n_layers, ...) → a per-layer column
            per_layer = lr * decay ** (n_layers - jnp.arange(n_layers, dtype=jnp.float32))
            return per_layer.reshape((n_layers,) + (1,) * (x.ndim - 1))
        return jnp.full((), lr * decay ** (n_layers + 1 - depth), jnp.float32)

    return jax.tree_util.tree_map_with_path(scale, params)


def make_finetune_optimizer(f: FinetuneConfig, total_steps: int, n_layers: int,
                            params: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with per-parameter peak lrs (head lr, layer-wise decay) on one warmup/decay
    schedule and optional clipping, over ``params``: the trained ones (a frozen backbone or
    one with LoRA adapters is left out by the caller, :mod:`jaxlm.models.trainable`).
    Returns (tx, the backbone's lr schedule, for logging)."""
    multiplier = finetune_schedule(total_steps, f.warmup_ratio)
    scales = lr_scales(params, f.lr, f.head_lr or f.lr, f.layer_decay, n_layers)

    def scale_by_lr(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        m = multiplier(state.count)
        updates = jax.tree.map(lambda u, s: -m * s * u, updates, scales)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    lr_tx = optax.GradientTransformation(
        lambda _: optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32)), scale_by_lr)
    adamw = optax.chain(
        optax.scale_by_adam(b1=f.b1, b2=f.b2, eps=f.eps),
        optax.add_decayed_weights(f.weight_decay,
                                  mask=lambda p: decay_mask(p, ["norms", "biases"])),
        lr_tx)
    tx = adamw if f.clip_norm is None else optax.chain(optax.clip_by_global_norm(f.clip_norm),
                                                       adamw)
    return tx, lambda step: f.lr * multiplier(step)
