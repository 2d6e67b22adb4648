"""Masked-language modelling: recover the corrupted tokens (BERT pretraining).

Batches come from the data pipeline's ``mlm`` mode: ``inputs`` with 15% of the real tokens
selected (80% replaced by the mask token, 10% by a random token, 10% kept), ``targets`` the
original tokens, ``weights`` 1 exactly at the selected positions. The encoder sees the whole
row at once (bidirectional attention within each packed document). The loss is the same
weighted token cross-entropy as causal LM's — only the model, its head and which positions
weigh differ — so this task reuses it (on the head's logits: BERT's head transforms the
hidden states before its decoder, so it is not fused with the loss).

The head runs only where a loss can be: a row selects at most
:func:`~jaxlm.data.mlm.max_predictions` positions (the collator guarantees it), so the
selected positions are gathered first — (B, K) of (B, L), K = 40 of 128 at 15% — and the
vocabulary projection, the largest matmul of a small encoder, is done on those alone. The
loss is the same as on every position, since the others weigh 0.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.data.mlm import max_predictions
from jaxlm.models import MaskedLM as MaskedLMModel
from jaxlm.tasks.base import Batch, Sums
from jaxlm.tasks.causal_lm import CausalLM, token_cross_entropy_sums


class MaskedLM(CausalLM):
    """Masked-token prediction with an encoder and :class:`~jaxlm.models.MaskedLM`."""

    model_class = MaskedLMModel

    def __init__(self, cfg: ModelConfig, z_loss: float = 0.0,
                 mlm_probability: float = 0.15) -> None:
        super().__init__(cfg, z_loss)
        self.mlm_probability = mlm_probability

    def loss_sums(self, params: Any, batch: Batch,
                  rng: jax.Array | None = None) -> tuple[jax.Array, Sums]:
        k = max_predictions(batch["inputs"].shape[1], self.mlm_probability)
        weights, at = jax.lax.top_k(batch["weights"], k)  # (B, K): the selected positions first
        targets = jnp.take_along_axis(batch["targets"], at, axis=1)  # (B, K)
        logits = self.apply(params, batch, rng, predict_at=at)  # (B, K, V) f32
        return token_cross_entropy_sums(logits, targets, weights, self.z_loss)
