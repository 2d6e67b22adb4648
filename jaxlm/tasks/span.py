"""Extractive question answering: start and end logits over the context's tokens.

The model is a backbone with a two-way per-token head (:class:`~jaxlm.models.TokenClassifier`,
as ``BertForQuestionAnswering``'s ``qa_outputs``): channel 0 scores each token as the answer's
start, channel 1 as its end. Batches are ``[CLS] question [SEP] context [SEP]`` windows:
``inputs``, ``segment_ids`` (1 on tokens, 0 on padding), ``token_types`` (0 question, 1
context) and ``span_mask`` (1 where an answer may start or end: the window's context tokens,
and ``[CLS]``, which stands for "the answer is not in this window"), all (B, L) int32;
``labels`` (B, 2) int32, the start and end positions (0, 0 when the answer is elsewhere);
``weights`` (B,) f32 (0 for rows that only pad the batch). The loss is the mean of the start
and end cross-entropies over the allowed positions, as in BERT's SQuAD fine-tuning.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.models import TokenClassifier
from jaxlm.tasks.base import Batch, Sums, Task

NEG = -1e9  # logit of a position the answer cannot be at


class SpanExtraction(Task):
    """Start/end prediction over context tokens (see the module docstring)."""

    model_keys = ("inputs", "segment_ids", "token_types")

    def __init__(self, cfg: ModelConfig, dropout: float = 0.1) -> None:
        self.cfg = cfg
        self.model = TokenClassifier(cfg, 2, dropout)

    def dummy_batch(self, rows: int = 1, length: int | None = None) -> dict[str, np.ndarray]:
        shape = (rows, length or min(self.init_len, self.cfg.max_seq_len))
        ones = np.ones(shape, np.int32)
        return {"inputs": np.zeros(shape, np.int32), "segment_ids": ones,
                "token_types": np.zeros(shape, np.int32), "span_mask": ones,
                "labels": np.zeros((rows, 2), np.int32), "weights": np.ones(rows, np.float32)}

    def logits(self, params: Any, batch: Batch, rng: jax.Array | None = None) -> jax.Array:
        """(B, L, 2) start/end logits, NEG where the answer cannot be."""
        out = self.apply(params, batch, rng).astype(jnp.float32)  # (B, L, 2)
        return jnp.where(batch["span_mask"][..., None] > 0, out, NEG)

    def loss_sums(self, params: Any, batch: Batch,
                  rng: jax.Array | None = None) -> tuple[jax.Array, Sums]:
        logits = self.logits(params, batch, rng)  # (B, L, 2)
        logp = jax.nn.log_softmax(logits, axis=1)  # over positions
        y, w = batch["labels"], batch["weights"]  # (B, 2), (B,)
        picked = jnp.take_along_axis(logp, y[:, None, :], axis=1)[:, 0, :]  # (B, 2)
        nll = -picked.mean(-1)  # (B,)
        pred = jnp.argmax(logits, axis=1)  # (B, 2)
        exact = jnp.all(pred == y, axis=-1)
        sums = {"loss": jnp.sum(nll * w), "correct": jnp.sum(exact * w), "weight": jnp.sum(w)}
        return sums["loss"], sums

    def predict(self, params: Any, batch: Batch) -> jax.Array:
        """(B, L, 2) start/end logits (the best span is chosen on the host)."""
        return self.logits(params, batch)

    def train_metrics(self, sums: Sums) -> dict[str, jax.Array]:
        denom = jnp.maximum(sums["weight"], 1.0)
        return {"loss": sums["loss"] / denom, "accuracy": sums["correct"] / denom,
                "examples": sums["weight"]}

    def eval_metrics(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        n = max(float(sums["weight"]), 1.0)
        return {"loss": float(sums["loss"]) / n, "accuracy": float(sums["correct"]) / n,
                "examples": float(sums["weight"])}
