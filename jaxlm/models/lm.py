"""Whole models: the backbone with one head each. Parameter trees are
``{"backbone": ..., "<head>": ...}``, so swapping a head is replacing one subtree.

- :class:`DecoderLM`: causal language model (GPT-2, Llama), tokens → next-token logits.
- :class:`MaskedLM`: encoder (BERT) with the masked-LM head, tokens → logits at every position.
- :class:`SequenceClassifier` / :class:`TokenClassifier`: any backbone with a task head.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.models.backbone import Backbone
from jaxlm.models.heads import (
    LMHead,
    MaskedLMHead,
    Pooling,
    SequenceClassificationHead,
    TokenClassificationHead,
)


def _embedding_table(backbone: Backbone) -> jax.Array:
    """The backbone's token embedding (V, D), for heads tied to it."""
    return nn.unbox(backbone.variables["params"]["wte"]["embedding"])


class DecoderLM(nn.Module):
    """Causal language model: tokens (B, L) → logits (B, L, V) in f32.

    ``decode=True`` runs on the KV cache (the ``cache`` collection), for :mod:`jaxlm.generate`.
    ``logits=False`` returns the final hidden states (B, L, D) and the head's weight instead,
    for the fused head + loss of training (:mod:`jaxlm.tasks.fused_xent`).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, train: bool = False,
                 decode: bool = False, logits: bool = True
                 ) -> jax.Array | tuple[jax.Array, jax.Array]:
        backbone = Backbone(self.cfg, name="backbone")
        h = backbone(tokens, positions, segment_ids, train=train, decode=decode)  # (B, L, D)
        table = _embedding_table(backbone) if self.cfg.tie_embeddings else None
        head = LMHead(self.cfg, name="lm_head")
        return head(h, table) if logits else (h, head(h, table, project=False))


class MaskedLM(nn.Module):
    """Encoder with BERT's masked-LM head: tokens (B, L) → logits (B, L, V) in f32, or
    (B, K, V) at the positions ``predict_at`` (B, K) only."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, train: bool = False,
                 predict_at: jax.Array | None = None) -> jax.Array:
        backbone = Backbone(self.cfg, name="backbone")
        h = backbone(tokens, positions, segment_ids, train=train)  # (B, L, D)
        if predict_at is not None:
            h = jnp.take_along_axis(h, predict_at[..., None], axis=1)  # (B, K, D)
        return MaskedLMHead(self.cfg, name="mlm_head")(h, _embedding_table(backbone))


class SequenceClassifier(nn.Module):
    """A backbone with a sequence-classification head: tokens (B, L) → logits (B, C).

    ``segment_ids`` (B, L) mark the real tokens (> 0) and padding (0): attention and pooling
    ignore padding. ``token_types`` (B, L) tell text and text_pair apart (BERT).
    """

    cfg: ModelConfig
    num_labels: int
    pooling: Pooling = "cls"
    pooler: bool = False
    dropout: float = 0.1

    @nn.compact
    def __call__(self, tokens: jax.Array, segment_ids: jax.Array,
                 token_types: jax.Array | None = None, train: bool = False) -> jax.Array:
        h = Backbone(self.cfg, name="backbone")(tokens, None, segment_ids, token_types,
                                                train=train)  # (B, L, D)
        head = SequenceClassificationHead(self.cfg, self.num_labels, self.pooling, self.pooler,
                                          self.dropout, name="head")
        return head(h, segment_ids > 0, train=train)  # (B, C)


class TokenClassifier(nn.Module):
    """A backbone with a per-token classification head: tokens (B, L) → logits (B, L, C)."""

    cfg: ModelConfig
    num_labels: int
    dropout: float = 0.1

    @nn.compact
    def __call__(self, tokens: jax.Array, segment_ids: jax.Array,
                 token_types: jax.Array | None = None, train: bool = False) -> jax.Array:
        h = Backbone(self.cfg, name="backbone")(tokens, None, segment_ids, token_types,
                                                train=train)  # (B, L, D)
        return TokenClassificationHead(self.cfg, self.num_labels, self.dropout,
                                       name="head")(h, train=train)  # (B, L, C)
