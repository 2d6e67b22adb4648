"""Masked-language modelling: recover the corrupted tokens (BERT pretraining).

Batches come from the data pipeline's ``mlm`` mode: ``inputs`` with 15% of the real tokens
selected (80% replaced by the mask token, 10% by a random token, 10% kept), ``targets`` the
original tokens, ``weights`` 1 exactly at the selected positions. The encoder sees the whole
row at once (bidirectional attention within each packed document). The loss is the same
weighted token cross-entropy as causal LM's — only the model, its head and which positions
weigh differ — so this task reuses it.
"""

from __future__ import annotations

from jaxlm.models import MaskedLM as MaskedLMModel
from jaxlm.tasks.causal_lm import CausalLM


class MaskedLM(CausalLM):
    """Masked-token prediction with an encoder and :class:`~jaxlm.models.MaskedLM`."""

    model_class = MaskedLMModel
