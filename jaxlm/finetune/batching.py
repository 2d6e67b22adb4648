"""Padded, length-bucketed batches of encoded examples, the same on every process.

Every process builds the same *plan* — which example goes in which row of which global
batch — from (seed, epoch) alone, then fills only its own rows. So the per-step shapes agree
across processes, and resuming is exact from just (epoch, batch number).

Shapes: a batch is padded to the smallest *bucket* that holds its longest example
(powers of two from 16, and the maximum length), so only a few shapes are ever compiled.
Training order: shuffle, then sort by length within windows of 32 batches and shuffle the
batches (rows of similar length share a batch; the order stays random). A batch that is
not full is completed with rows of weight 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxlm.finetune.labeled import Encoded

_TAG = 7  # RNG stream tag of the fine-tuning order
WINDOW = 32  # batches sorted by length together


def buckets(max_length: int, smallest: int = 16) -> list[int]:
    """Padded lengths used: 16, 32, 64, ... below ``max_length``, and ``max_length``."""
    out, n = [], smallest
    while n < max_length:
        out.append(n)
        n *= 2
    return [*out, max_length]


def bucket_of(length: int, sizes: list[int]) -> int:
    return next(b for b in sizes if b >= length)


def _rows(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split ``indices`` into batches of ``batch_size`` rows; the last padded with -1."""
    out = []
    for s in range(0, len(indices), batch_size):
        b = indices[s:s + batch_size]
        out.append(np.concatenate([b, np.full(batch_size - len(b), -1, b.dtype)]))
    return out


def train_plan(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's batches as example indices (-1 = padding row), in training order."""
    rng = np.random.default_rng([seed, epoch, _TAG])
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    window = batch_size * WINDOW
    for s in range(0, len(order), window):
        chunk = order[s:s + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(_rows(chunk, batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def eval_plan(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """All examples once, shortest first (least padding); order does not change sums."""
    return _rows(np.argsort(lengths, kind="stable"), batch_size)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def make_batch(data: Encoded, rows: np.ndarray, length: int,
               problem: str, num_labels: int) -> dict[str, np.ndarray]:
    """Arrays of the given rows (-1 = a padding row of weight 0), padded to ``length``.

    ``segment_ids`` is 1 on real tokens and 0 on padding (the backbone's attention mask and
    the head's pooling mask); padding ids are 0.
    """
    b = len(rows)
    inputs = np.zeros((b, length), np.int32)
    types = np.zeros((b, length), np.int32)
    seg = np.zeros((b, length), np.int32)
    token = problem == "token"
    weights = np.zeros((b, length) if token else b, np.float32)
    labels: Any = {
        "single_label": np.zeros(b, np.int32),
        "multi_label": np.zeros((b, num_labels), np.float32),
        "regression": np.zeros(b, np.float32),
        "token": np.zeros((b, length), np.int32),
    }[problem]
    for r, i in enumerate(rows):
        if i < 0:
            continue
        n = len(data.ids[i])
        inputs[r, :n], types[r, :n], seg[r, :n] = data.ids[i], data.types[i], 1
        if data.labels is None:
            continue
        if token:
            lab = data.labels[i]
            labels[r, :n] = np.maximum(lab, 0)
            weights[r, :n] = lab >= 0
        else:
            labels[r] = data.labels[i]
            weights[r] = 1.0
    return {"inputs": inputs, "segment_ids": seg, "token_types": types, "labels": labels,
            "weights": weights}


def local_rows(rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This process's contiguous share of a global batch's rows."""
    per = len(rows) // process_count
    return rows[process_index * per:(process_index + 1) * per]


def batch_length(data: Encoded, rows: np.ndarray, sizes: list[int]) -> int:
    """The bucket of a global batch (from all its rows, so every process agrees)."""
    longest = max((len(data.ids[i]) for i in rows if i >= 0), default=1)
    return bucket_of(longest, sizes)
