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

A long document arrives as several pieces (``Doc`` with ``last=False``). Its items are the
same as if it had come whole: each piece after the first starts with the previous piece's
last token (``tail``), so the pair across the cut is not lost. A piece that continues a
document in the same row extends its segment (positions go on); a document that spans
pieces is placed as a long one (fill the rest of the row), since its length is not known yet.

The packer's state between rows is the queue of pieces plus how many items of the first were
emitted, how many pieces were taken off since the last :meth:`Packer.add`, and (pad mode
with ``truncate``) whether the rest of a cut document is being dropped: positions only, so
the pipeline checkpoints where the pieces came from rather than what they hold.
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
    """The items of a document, or of one piece of it, for the packer."""

    inputs: np.ndarray  # (n,) int32
    targets: np.ndarray  # (n,) int32
    first: bool = True  # starts its document (else continues the previous Doc's)
    last: bool = True  # ends its document

    def __len__(self) -> int:
        return len(self.inputs)


def make_doc(ids: list[int] | np.ndarray, eos: int, mode: Mode, *, tail: int | None = None,
             last: bool = True) -> Doc:
    """The items of (a piece of) a document; the next piece's ``tail`` is ``targets[-1]``.

    A whole document (``tail=None``, ``last=True``) is ``s = [EOS] + ids + [EOS]``: causal pairs
    ``(s[:-1], s[1:])``, or ``s`` itself for mlm. A first piece omits the closing EOS; a
    later one starts from ``tail`` (causal: the previous piece's last token, which still
    needs its target; mlm: no prefix).
    """
    first = tail is None
    head = [eos] if first or mode != "mlm" else []
    s = np.empty(len(head) + len(ids) + int(last), dtype=np.int32)  # (n + 1,) causal
    if head:
        s[0] = eos if first else tail
    s[len(head):len(head) + len(ids)] = ids
    if last:
        s[-1] = eos
    if mode == "mlm":
        return Doc(s, s, first, last)
    return Doc(s[:-1], s[1:], first, last)


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
        self.popped = 0  # Docs taken off the queue since the last add()
        self.drop = False  # pad + truncate: the rest of a cut document is being dropped
        self._fill = 0  # items in the open row
        self._seg = 0  # segments in the open row
        self._pos = 0  # position of the next item in the open segment
        self._joined = False  # the next Doc continues the open segment (same document)
        self._arange = np.arange(seq_len, dtype=np.int32)

    def add(self, docs: Iterable[Doc]) -> None:
        """Queue the next Docs; called when the queue is empty (``fill_row`` said False)."""
        self.docs.extend(docs)
        self.popped = 0

    def _pop(self) -> None:
        self.docs.popleft()
        self.offset = 0
        self.popped += 1

    def _put(self, batch: dict[str, np.ndarray], r: int, k: int) -> None:
        d, o, f = self.docs[0], self.offset, self._fill
        if not self._joined:
            self._seg += 1
            self._pos = 0
        p = self._pos
        batch["inputs"][r, f:f + k] = d.inputs[o:o + k]
        batch["targets"][r, f:f + k] = d.targets[o:o + k]
        batch["segment_ids"][r, f:f + k] = self._seg
        batch["positions"][r, f:f + k] = self._arange[p:p + k]
        batch["weights"][r, f:f + k] = 1.0
        self._fill += k
        self._pos += k
        if o + k == len(d):
            self._pop()
            self._joined = not d.last
        else:
            self.offset += k
            self._joined = False

    def _close(self) -> bool:
        self._fill = self._seg = self._pos = 0
        self._joined = False
        return True

    def fill_row(self, batch: dict[str, np.ndarray], r: int) -> bool:
        """Continue filling row ``r``; True once it is closed, False when out of documents."""
        L = self.seq_len
        while self.docs:
            d = self.docs[0]
            if self.drop:  # pieces of a document that truncate cut
                self._pop()
                self.drop = not d.last
                continue
            n = len(d) - self.offset
            room = L - self._fill
            if self.mode == "pad":
                k = min(n, room)
                self._put(batch, r, k)
                whole = k == n and d.last  # the document ends in this row
                if self._fill == L or whole:
                    if self.truncate and not whole:
                        if k < n:
                            self._pop()
                        self.drop = not d.last
                    return self._close()
                continue  # the piece ended, its document goes on in this row
            if not d.first or self.offset or not d.last:  # a split document, or one in pieces
                self._put(batch, r, min(n, room))
            elif n <= room:
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
        """Pieces taken off since :meth:`add`, items of the next one placed, and the drop
        flag: the position in the last added list of Docs. Only defined between rows."""
        assert self._fill == 0, "packer state is only defined between rows"
        return {"popped": self.popped, "offset": self.offset, "drop": self.drop}

    def restore(self, docs: list[Doc], popped: int, offset: int, drop: bool) -> None:
        """Continue from :meth:`state`, given the same Docs that were last added."""
        self.docs = deque(docs[popped:])
        self.popped, self.offset, self.drop = popped, offset, drop
        self._close()
