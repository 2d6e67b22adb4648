"""Which parameters a run trains: the split of a parameter tree into trained and frozen.

A fine-tuning run with LoRA or ``finetune.freeze_backbone`` trains part of its parameters
(adapters, the task head) and keeps the rest (the backbone) frozen. :class:`Trainable` says
which by path (``backbone/block_0/attn/query/lora_a``); the train step differentiates only the
trained part (no gradient, no optimizer state for the rest), the frozen part may be stored
in bf16, and checkpoints hold the trained part only (the frozen part is read back from the
backbone). ``None`` everywhere means every parameter trains (pretraining, full fine-tuning).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util


@dataclasses.dataclass(frozen=True)
class Trainable:
    """``trains(path)``: whether the parameter at ``path`` is trained; ``frozen_dtype``: the
    storage dtype of the others (None = as initialised)."""

    trains: Callable[[str], bool]
    frozen_dtype: str | None = None


def _flat(params: Any) -> dict[str, Any]:
    return traverse_util.flatten_dict(params, sep="/")


def split(params: Any, trainable: Trainable | None) -> tuple[Any, Any]:
    """(trained, frozen): two nested dicts with the same paths as ``params`` between them."""
    if trainable is None:
        return params, {}
    flat = _flat(params)
    trained = {k: v for k, v in flat.items() if trainable.trains(k)}
    frozen = {k: v for k, v in flat.items() if not trainable.trains(k)}
    return (traverse_util.unflatten_dict(trained, sep="/"),
            traverse_util.unflatten_dict(frozen, sep="/"))


def join(trained: Any, frozen: Any) -> Any:
    """The whole parameter tree again (the inverse of :func:`split`)."""
    if not frozen:
        return trained
    return traverse_util.unflatten_dict({**_flat(frozen), **_flat(trained)}, sep="/")


def trained_part(params: Any, trainable: Trainable | None) -> Any:
    """The trained part of ``params`` (all of them when ``trainable`` is None)."""
    return split(params, trainable)[0]


def store_frozen(params: Any, trainable: Trainable | None) -> Any:
    """``params`` with the frozen part cast to its storage dtype."""
    if trainable is None or trainable.frozen_dtype is None:
        return params
    trained, frozen = split(params, trainable)
    dt = jnp.dtype(trainable.frozen_dtype)
    return join(trained, jax.tree.map(lambda x: x.astype(dt), frozen))


def count(params: Any, trainable: Trainable | None) -> tuple[int, int]:
    """(trained, all) parameter counts of a (possibly abstract) tree."""
    n = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree))  # noqa: E731
    return n(trained_part(params, trainable)), n(params)
