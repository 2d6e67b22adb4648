"""Packing tokenized documents into fixed-length rows with segment ids and positions.

Causal LM ('pack'): each document's tokens ``d`` get EOS on both sides, ``s = [EOS] + d +
[EOS]``, and contribute the (input, target) pairs ``s[:-1], s[1:]``. Pairs are placed greedily,
in order, into rows of ``seq_len``:

* a document that fits in the rest of the row goes there, as the next segment;
* one that does not fit but would fit an empty row closes the row (the rest is padding);
* one longer than ``seq_len`` is split: the first chunk fills the rest of the row, then whole
  rows, then the tail is packed like any document. Nothing is ever dropped.

Every chunk is its own segment (ids 1, 2, … within a row; 0 = padding) with positions
restarting at 0, so the model's segment mask never lets two chunks see each other.
'mlm' packs the same way but rows hold the tokens ``s`` themselves (inputs = targets before
masking). 'pad' puts one chunk per row (a document is split, or cut when ``truncate``).

The packer's state between rows is just the queue of unfinished documents plus how many items
of the first one were already emitted, so the pipeline can checkpoint it as texts + offset.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Mode = Literal["pack", "pad", "mlm"]
BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "weights")


@dataclass(frozen=True)
class Doc:
    """A tokenized document: its text (for checkpoints) and the items it contributes."""

    text: str
    inputs: np.ndarray  # (n,) int32
    targets: np.ndarray  # (n,) int32

    def __len__(self) -> int:
        return len(self.inputs)


def make_doc(text: str, ids: list[int], eos: int, mode: Mode) -> Doc:
    """``s = [EOS] + ids + [EOS]``; causal pairs ``(s[:-1], s[1:])``, or ``s`` itself for mlm."""
    s = np.empty(len(ids) + 2, dtype=np.int32)
    s[0] = s[-1] = eos
    s[1:-1] = ids
    if mode == "mlm":
        return Doc(text, s, s)
    return Doc(text, s[:-1], s[1:])


def empty_batch(rows: int, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """A batch of all-padding rows: pad ids, segment 0, position 0, weight 0."""
    return {
        "inputs": np.full((rows, seq_len), pad_id, np.int32),
        "targets": np.full((rows, seq_len), pad_id, np.int32),
        "segment_ids": np.zeros((rows, seq_len), np.int32),
        "positions": np.zeros((rows, seq_len), np.int32),
        "weights": np.zeros((rows, seq_len), np.float32),
    }


class Packer:
    """Fills rows of a batch, in place, from a queue of documents (see the module docstring)."""

    def __init__(self, seq_len: int, mode: Mode, truncate: bool = False) -> None:
        self.seq_len, self.mode, self.truncate = seq_len, mode, truncate
        self.docs: deque[Doc] = deque()
        self.offset = 0  # items of docs[0] already placed
        self._fill = 0  # items in the open row
        self._seg = 0  # segments in the open row
        self._arange = np.arange(seq_len, dtype=np.int32)

    def add(self, docs: Iterable[Doc]) -> None:
        self.docs.extend(docs)

    @property
    def queued_items(self) -> int:
        """Items (pairs or tokens) waiting to be placed."""
        return sum(len(d) for d in self.docs) - self.offset

    def _put(self, batch: dict[str, np.ndarray], r: int, k: int) -> None:
        d, o, f = self.docs[0], self.offset, self._fill
        self._seg += 1
        batch["inputs"][r, f:f + k] = d.inputs[o:o + k]
        batch["targets"][r, f:f + k] = d.targets[o:o + k]
        batch["segment_ids"][r, f:f + k] = self._seg
        batch["positions"][r, f:f + k] = self._arange[:k]
        batch["weights"][r, f:f + k] = 1.0
        self._fill += k
        if o + k == len(d) or (self.mode == "pad" and self.truncate):
            self.docs.popleft()
            self.offset = 0
        else:
            self.offset += k

    def _close(self) -> bool:
        self._fill = self._seg = 0
        return True

    def fill_row(self, batch: dict[str, np.ndarray], r: int) -> bool:
        """Continue filling row ``r``; True once it is closed, False when out of documents."""
        L = self.seq_len
        while self.docs:
            n = len(self.docs[0]) - self.offset
            room = L - self._fill
            if self.mode == "pad":
                self._put(batch, r, min(n, L))
                return self._close()
            if n <= room:
                self._put(batch, r, n)
            elif n <= L:  # fits an empty row: do not split it, start a new row
                return self._close()
            else:  # longer than a row: split, filling this row first
                self._put(batch, r, room)
            if self._fill == L:
                return self._close()
        return False

    def flush(self, batch: dict[str, np.ndarray], r: int) -> bool:
        """At the end of the stream: close row ``r`` if it holds anything."""
        return self._close() if self._fill else False

    # ------------------------------------------------------------------------------ state

    def state(self) -> dict[str, object]:
        """Unfinished documents (as texts) and the offset into the first; only between rows."""
        assert self._fill == 0, "packer state is only defined between rows"
        return {"texts": [d.text for d in self.docs], "offset": self.offset}

    def restore(self, docs: list[Doc], offset: int) -> None:
        """Continue from :meth:`state` (``docs`` re-tokenized from its texts)."""
        self.docs = deque(docs)
        self.offset = offset
        self._fill = self._seg = 0
