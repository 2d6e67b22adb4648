"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

The settings travel into the compiled decode step as arrays, not as static arguments, so
changing them never recompiles: ``temperature`` 0 is greedy (argmax); ``top_k`` 0 and
``top_p`` 1 switch those filters off. Top-k is applied first, then top-p keeps the smallest
set of the most likely tokens whose probability reaches ``top_p`` (always at least one).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxlm.errors import UserError


class GenerationError(UserError):
    """A generation request that cannot be served (bad settings, prompt, or model)."""


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How tokens are drawn. The defaults are greedy decoding."""

    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int | None = None  # keep the k most likely tokens; None = all
    top_p: float | None = None  # nucleus: smallest set with this much probability; None = 1

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:  # also catches NaN
            raise GenerationError(f"temperature {self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise GenerationError(f"top_k {self.top_k} must be >= 1 (or unset for no top-k)")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p {self.top_p} must be in (0, 1]")

    def arrays(self) -> dict[str, Any]:
        """The settings as the arrays :func:`sample_logits` reads."""
        return {"temperature": jnp.float32(self.temperature),
                "top_k": jnp.int32(self.top_k or 0),
                "top_p": jnp.float32(1.0 if self.top_p is None else self.top_p)}


def sample_logits(logits: jax.Array, key: jax.Array, settings: dict[str, Any]) -> jax.Array:
    """Next tokens (B,) int32 from logits (B, V) under ``Sampling.arrays()`` settings."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    vocab = logits.shape[-1]
    scaled = logits.astype(jnp.float32) / jnp.maximum(settings["temperature"], 1e-6)
    ranked = -jnp.sort(-scaled, axis=-1)  # (B, V) most likely first
    k = jnp.where(settings["top_k"] > 0, jnp.minimum(settings["top_k"], vocab), vocab)
    in_top_k = jnp.arange(vocab) < k  # (V,) over ranks
    probs = jax.nn.softmax(jnp.where(in_top_k, ranked, -jnp.inf), axis=-1)  # (B, V)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability of the better-ranked tokens
    kept = in_top_k & (before < settings["top_p"])  # (B, V); rank 0 always kept
    n_kept = jnp.maximum(jnp.sum(kept, axis=-1, keepdims=True), 1)  # (B, 1)
    threshold = jnp.take_along_axis(ranked, n_kept - 1, axis=-1)  # (B, 1) least kept logit
    filtered = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    drawn = jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
    return jnp.where(settings["temperature"] > 0, drawn, greedy)
