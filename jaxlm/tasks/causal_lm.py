"""Causal language modelling: predict every next token (GPT-2, Llama pretraining).

Batches come from the data pipeline's ``pack``/``pad`` modes: ``inputs``, ``targets``,
``positions``, ``segment_ids`` (B, L) int32 and ``weights`` (B, L) f32 (0 on padding).
The loss is the weighted mean token cross-entropy, plus an optional z-loss
(``z_loss · log²Z``) that keeps the softmax normaliser near 1.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.models import DecoderLM
from jaxlm.tasks.base import Batch, Sums, Task
from jaxlm.tasks.fused_xent import chunk_length, lm_head_cross_entropy, token_sums


def token_cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                             z_loss: float) -> tuple[jax.Array, Sums]:
    """Summed weighted NLL (+ z-loss) of (B, L, V) logits, and the sums to average it."""
    _, sums = token_sums(logits, targets, weights)
    return sums["nll"] + z_loss * sums["z"], sums


def token_metrics(sums: Any) -> dict[str, Any]:
    """loss, z_loss, accuracy and tokens from token cross-entropy sums (traced or host)."""
    denom = jnp.maximum(sums["weight"], 1.0)
    return {"loss": sums["nll"] / denom, "z_loss": sums["z"] / denom,
            "accuracy": sums["correct"] / denom, "tokens": sums["weight"]}


def token_eval_metrics(sums: dict[str, np.ndarray]) -> dict[str, float]:
    """Held-out loss, perplexity, accuracy and token count."""
    weight = float(sums["weight"])
    loss = float(sums["nll"]) / max(weight, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": float(sums["correct"]) / max(weight, 1.0), "tokens": weight}


class CausalLM(Task):
    """Next-token prediction with :class:`~jaxlm.models.DecoderLM`."""

    model_keys = ("inputs", "positions", "segment_ids")
    model_class: type = DecoderLM

    def __init__(self, cfg: ModelConfig, z_loss: float = 0.0) -> None:
        self.cfg, self.z_loss = cfg, z_loss
        self.model = self.model_class(cfg)

    def dummy_batch(self) -> dict[str, np.ndarray]:
        shape = (1, min(self.init_len, self.cfg.max_seq_len))
        ints = np.zeros(shape, np.int32)
        return {"inputs": ints, "targets": ints, "positions": ints,
                "segment_ids": np.ones(shape, np.int32), "weights": np.ones(shape, np.float32)}

    def loss_sums(self, params: Any, batch: Batch,
                  rng: jax.Array | None = None) -> tuple[jax.Array, Sums]:
        """The LM head and the loss fused over sequence chunks (:mod:`.fused_xent`): the
        (B, L, V) logits are never materialised."""
        h, w = self.apply(params, batch, rng, logits=False)  # (B, L, D), head weight
        cfg = self.cfg
        return lm_head_cross_entropy(
            h, w, batch["targets"], batch["weights"], self.z_loss, cfg.dtype,
            cfg.tie_embeddings, chunk_length(*batch["targets"].shape, cfg.vocab_size))

    def train_metrics(self, sums: Sums) -> dict[str, jax.Array]:
        return token_metrics(sums)

    def eval_metrics(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        return token_eval_metrics(sums)
