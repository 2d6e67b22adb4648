"""Heads: what is computed from the backbone's hidden states (B, L, D).

- :class:`LMHead`: next-token logits over the vocabulary, tied to the token embedding or
  its own ``lm_head`` kernel.
- :class:`MaskedLMHead`: BERT's: dense → GELU → LayerNorm → tied decoder + bias.
- :class:`SequenceClassificationHead`: pool the sequence (``cls`` = first token, ``mean`` of
  the non-padding tokens, ``last`` non-padding token, ``attention``: a learned score per
  token, softmax-weighted over the non-padding tokens), an optional BERT-style tanh
  ``pooler``, dropout, one dense layer → (B, C). The same head serves single-label
  (softmax), multi-label (sigmoid) and regression (C = 1) problems; the task decides.
- :class:`TokenClassificationHead`: dropout and a dense layer per token → (B, L, C).

All produce f32 logits. Parameters carry logical axis names like the backbone's.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.models.layers import dense, dtypes, norm
from jaxlm.models.matmul import contract

Pooling = Literal["cls", "mean", "last", "attention"]


def tied_logits(x: jax.Array, table: jax.Array, dtype: str) -> jax.Array:
    """(B, L, D) · (V, D)ᵀ → (B, L, V) f32: a decoder that shares the embedding table."""
    return contract(x, table, 1, dtype, k_last=True)


class LMHead(nn.Module):
    """Next-token logits (B, L, V). ``table`` is the embedding (V, D) when tied.

    ``project=False`` returns the head's weight instead — the (V, D) table when tied, else
    the (D, V) kernel — for a loss that projects the hidden states itself
    (:mod:`jaxlm.tasks.fused_xent`).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array, table: jax.Array | None,
                 project: bool = True) -> jax.Array:
        cfg = self.cfg
        if cfg.tie_embeddings:
            w = table  # (V, D)
        else:
            init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab"))
            w = self.param("kernel", init, (cfg.d_model, cfg.vocab_size),
                           jnp.dtype(cfg.param_dtype))  # (D, V)
        if not project:
            return w
        return contract(h, w, 1, cfg.dtype, k_last=cfg.tie_embeddings)  # (B, L, V) f32


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: transform (dense, GELU, norm) then the tied decoder + bias."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array, table: jax.Array) -> jax.Array:  # (B, L, D) → (B, L, V)
        cfg = self.cfg
        x = dense(cfg.d_model, ("embed", "mlp"), use_bias=True, name="transform",
                  **dtypes(cfg))(h)  # (B, L, D)
        x = norm(cfg, "transform_norm")(nn.gelu(x, approximate=cfg.mlp == "gelu_tanh"))
        bias_init = nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",))
        bias = self.param("bias", bias_init, (cfg.vocab_size,), jnp.dtype(cfg.param_dtype))
        return tied_logits(x, table, cfg.dtype) + bias  # (B, L, V)


def pool(h: jax.Array, mask: jax.Array, how: Pooling) -> jax.Array:
    """(B, L, D) hidden states, (B, L) bool mask of real tokens → (B, D).

    ``cls``: the first token; ``mean``: the average of the real tokens; ``last``: the last
    real token (what a causal decoder has seen the whole text by).
    """
    if how == "cls":
        return h[:, 0]
    if how == "mean":
        m = mask[..., None].astype(h.dtype)  # (B, L, 1)
        return jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    if how != "last":  # "attention" has parameters: SequenceClassificationHead computes it
        raise ValueError(f"pool() takes cls, mean or last, not {how!r}")
    idx = jnp.max(jnp.where(mask, jnp.arange(h.shape[1])[None, :], 0), axis=1)  # (B,)
    return jnp.take_along_axis(h, idx[:, None, None], axis=1)[:, 0]


class SequenceClassificationHead(nn.Module):
    """Pooled hidden state → (optional tanh pooler) → dropout → dense → logits (B, C)."""

    cfg: ModelConfig
    num_labels: int
    pooling: Pooling = "cls"
    pooler: bool = False
    dropout: float = 0.1

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.cfg
        if self.pooling == "attention":  # a learned query: one score per token
            scores = dense(1, ("embed", None), use_bias=False, name="attention_pool",
                           **dtypes(cfg))(h)[..., 0].astype(jnp.float32)  # (B, L)
            weights = jax.nn.softmax(jnp.where(mask, scores, -1e9), axis=-1)  # (B, L)
            x = jnp.einsum("bl,bld->bd", weights.astype(h.dtype), h)  # (B, D)
        else:
            x = pool(h, mask, self.pooling)  # (B, D)
        if self.pooler:  # BERT's pooler: dense + tanh over the pooled token
            x = jnp.tanh(dense(cfg.d_model, ("embed", "mlp"), use_bias=True, name="pooler",
                               **dtypes(cfg))(x))
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        logits = dense(self.num_labels, ("embed", None), use_bias=True, name="classifier",
                       **dtypes(cfg))(x)
        return logits.astype(jnp.float32)  # (B, C)


class TokenClassificationHead(nn.Module):
    """Dropout → dense on every token → logits (B, L, C)."""

    cfg: ModelConfig
    num_labels: int
    dropout: float = 0.1

    @nn.compact
    def __call__(self, h: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.cfg
        x = nn.Dropout(self.dropout)(h, deterministic=not train)
        logits = dense(self.num_labels, ("embed", None), use_bias=True, name="classifier",
                       **dtypes(cfg))(x)
        return logits.astype(jnp.float32)  # (B, L, C)
