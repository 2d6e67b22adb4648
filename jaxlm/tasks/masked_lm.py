"""Masked-language modelling: recover the corrupted tokens (BERT pretraining).

Batches come from the data pipeline's ``mlm`` mode: ``inputs`` with 15% of the real tokens
selected (80% replaced by the mask token, 10% by a random token, 10% kept), ``targets`` the
original tokens, ``weights`` 1 exactly at the selected positions. The encoder sees the whole
row at once (bidirectional attention within each packed document). The loss is the same
weighted token cross-entropy as causal LM's — only the model, its head and which positions
weigh differ — so this task reuses it (on the head's logits: BERT's head transforms the
hidden states before its decoder, so it is not fused with the loss).
"""

from __future__ import annotations

from typing import Any

import jax

from jaxlm.models import MaskedLM as MaskedLMModel
from jaxlm.tasks.base import Batch, Sums
from jaxlm.tasks.causal_lm import CausalLM, token_cross_entropy_sums


class MaskedLM(CausalLM):
    """Masked-token prediction with an encoder and :class:`~jaxlm.models.MaskedLM`."""

    model_class = MaskedLMModel

    def loss_sums(self, params: Any, batch: Batch,
                  rng: jax.Array | None = None) -> tuple[jax.Array, Sums]:
        logits = self.apply(params, batch, rng)  # (B, L, V) f32
        return token_cross_entropy_sums(logits, batch["targets"], batch["weights"], self.z_loss)
