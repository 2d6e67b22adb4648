"""The masked-LM collator (BERT): corrupt packed rows for the encoder objective.

Of the positions holding a real, non-special token, each is selected with probability ``p``
(``data.mlm_probability``, 0.15). A selected position becomes the mask token 80% of the time, a
random non-special token 10%, and stays unchanged 10%. Targets are the original tokens; the
loss weight is 1 exactly at selected positions.

A row selects at most :func:`max_predictions` positions (BERT's ``max_predictions_per_seq``;
the binomial count's mean + 4 standard deviations, so about one row in 30,000 drops the
selections beyond it, those with the largest draws), which lets the masked-LM task run its
vocabulary head on those positions only instead of on every token of the row.

Randomness is keyed by (seed, process, number of the batch's first row in this host's stream)
rather than drawn from a running RNG, so a resumed run masks exactly as an uninterrupted one
with nothing but the row counter to checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from jaxlm.config import DataConfig

_TAG_MLM = 4  # RNG stream tag


def max_predictions(length: int, probability: float) -> int:
    """The most positions a row of ``length`` tokens selects: mean + 4 standard deviations
    of the Binomial(length, probability) count, rounded up to a multiple of 8, at most
    ``length`` (40 for 128 tokens at 0.15, 112 for 512)."""
    mean = length * probability
    bound = mean + 4.0 * math.sqrt(mean * (1.0 - probability))
    return min(length, 8 * math.ceil(bound / 8))


def head_positions(data: DataConfig) -> int | None:
    """Per row, the positions the pretraining head runs on: :func:`max_predictions` in
    ``mlm`` mode, None (every position) otherwise; what the FLOPs count uses."""
    if data.mode != "mlm":
        return None
    return max_predictions(data.seq_len, data.mlm_probability)


class MaskCollator:
    """Applies BERT-style masking to packed batches in place (see the module docstring)."""

    def __init__(
        self, probability: float, mask_id: int, vocab_size: int, special_ids: Iterable[int],
        seed: int, process_index: int,
    ) -> None:
        self.p, self.mask_id = probability, mask_id
        self.special = np.unique(np.asarray(sorted(set(special_ids)), dtype=np.int32))
        self.replacements = np.setdiff1d(np.arange(vocab_size, dtype=np.int32), self.special)
        self.seed, self.process_index = seed, process_index

    def __call__(self, batch: dict[str, np.ndarray], first_row: int) -> dict[str, np.ndarray]:
        """Mask ``batch`` (rows numbered from ``first_row`` in this host's stream)."""
        tokens = batch["inputs"]
        rng = np.random.default_rng([self.seed, self.process_index, first_row, _TAG_MLM])
        u = rng.random((2, *tokens.shape))
        selected = (batch["segment_ids"] > 0) & ~np.isin(tokens, self.special) & (u[0] < self.p)
        cap = max_predictions(tokens.shape[1], self.p)
        over = selected.sum(axis=1) > cap  # (B,) rows past the cap (rare): keep the smallest draws
        if over.any():
            draws = np.where(selected[over], u[0][over], np.inf)
            kth = np.partition(draws, cap - 1, axis=1)[:, cap - 1 : cap]  # (b, 1)
            selected[over] &= draws <= kth
        to_random = selected & (u[1] >= 0.8) & (u[1] < 0.9)
        inputs = tokens.copy()
        inputs[selected & (u[1] < 0.8)] = self.mask_id
        inputs[to_random] = self.replacements[
            rng.integers(len(self.replacements), size=int(to_random.sum()))]
        batch["targets"] = tokens
        batch["inputs"] = inputs
        batch["weights"] = selected.astype(np.float32)
        return batch
