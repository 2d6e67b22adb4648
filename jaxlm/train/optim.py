"""The optimizer: optax AdamW with warmup + cosine decay, clipping and a weight-decay mask."""

from __future__ import annotations

from typing import Any

import jax
import optax

from jaxlm.config import TrainConfig


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
    (embedding tables: wte, wpe)."""

    def decays(path: tuple, _: Any) -> bool:
        names = _path_names(path)
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
