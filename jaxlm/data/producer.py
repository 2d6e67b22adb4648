"""Producing batches: pieces → tokens → packed rows → shuffled row windows → batches.

Everything here runs in the pipeline's background thread. The work goes in *rounds*: when
the packer runs out, up to :data:`ROUND_PIECES` pieces (at most :data:`ROUND_CHARS`
characters) are taken from the document stream and tokenized in one batched call, so
memory is bounded by a round, never by a document.

Packed rows are not handed out in order. They are collected in *windows* of
``data.shuffle_rows`` rows, and each window is emitted in a seeded random order (keyed by
seed, process and window number), so the consecutive rows of one long document end up in
different batches. Batches are consecutive slices of that row stream, so the stream does
not depend on the batch size.

Positions, not texts. The producer's position between two rows is the position of the
document stream when the current round began (plus the tokenizer's carried token and the
reading counters then), how many of that round's Docs the packer has used up and how many
items of the next. A batch's snapshot is the position where its window began plus how many
of the window's rows were handed out already. Restoring re-reads that round, refills that
window and skips what was handed out: a few windows' worth of work, and an exact resume.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from jaxlm.data.mlm import MaskCollator
from jaxlm.data.packing import Doc, Mode, Packer, empty_batch, make_doc
from jaxlm.data.stream import DocumentStream, Piece

ROUND_PIECES = 64  # pieces per batched tokenizer call
ROUND_CHARS = 1 << 20  # characters per round at most (bounds the tokenizer's memory)
_TAG_ROWS = 5  # RNG stream tag: row order within a window

Batch = dict[str, np.ndarray]


class PieceTokenizer:
    """Pieces → Docs for the packer, carrying the last token of a piece into the next.

    ``tail`` is None between documents; inside one it is the token the next piece starts
    from (see :func:`jaxlm.data.packing.make_doc`). Pieces that give no items (a piece of a
    document that tokenizes to nothing) are left out.
    """

    def __init__(self, encode: Callable[..., Any], eos: int, mode: Mode) -> None:
        self.encode, self.eos, self.mode = encode, eos, mode
        self.tail: int | None = None

    def __call__(self, pieces: list[Piece]) -> list[Doc]:
        if not pieces:
            return []
        enc = self.encode([text for text, _ in pieces], add_special_tokens=False)
        docs = []
        for (_, last), e in zip(pieces, enc, strict=True):
            doc = make_doc(e.ids, self.eos, self.mode, tail=self.tail, last=last)
            if len(doc):
                docs.append(doc)
                self.tail = None if last else int(doc.targets[-1])
        return docs


class Producer:
    """The producing side of :class:`jaxlm.data.pipeline.Pipeline` (see the module docstring).

    ``batches(stop)`` yields ``(batch, snapshot)`` pairs; ``restore(snapshot)`` continues
    right after the batch a snapshot was taken with. ``stats`` is shared with the sources,
    which count what they read into it.
    """

    def __init__(
        self, docs: DocumentStream, tokenizer: PieceTokenizer, packer: Packer,
        local_batch: int, pad_id: int, shuffle_rows: int, seed: int, process_index: int,
        mlm: MaskCollator | None, stats: dict[str, int],
    ) -> None:
        self.docs, self.tokenizer, self.packer = docs, tokenizer, packer
        self.local_batch, self.pad_id, self.mlm = local_batch, pad_id, mlm
        self.shuffle_rows = shuffle_rows  # 0: rows in order
        self.window_rows = shuffle_rows or local_batch
        self.seed, self.process_index = seed, process_index
        self.stats = stats  # reading counters (documents, empty_skipped, utf8_replaced)
        self._round = self._round_start()
        self._rows = self._batches = self._tokens = 0
        self._finished = self._exhausted = False
        self._window = 0  # number of the next window to fill
        self._win: Batch | None = None  # the current window's rows
        self._order = np.zeros(0, np.int64)  # the order its rows go out in
        self._used = 0  # rows of it handed out
        self._skip = 0  # after restore(): rows of the first window already handed out
        self._anchor = self._position_here()

    # --------------------------------------------------------------------------- positions

    def _round_start(self) -> dict[str, Any]:
        return {"docs": self.docs.state(), "tail": self.tokenizer.tail, "stats": dict(self.stats)}

    def _next_round(self) -> bool:
        """Feed the (empty) packer the next round of Docs; False at the end of the stream."""
        self._round = self._round_start()
        pieces = self.docs.take(ROUND_PIECES, ROUND_CHARS)
        self.packer.add(self.tokenizer(pieces))
        return bool(pieces)

    def _position_here(self) -> dict[str, Any]:
        """Where the row stream stands (between rows): the next window starts here."""
        return {"window": self._window, "round": self._round, **self.packer.state()}

    def _restore_position(self, pos: dict[str, Any]) -> None:
        rnd = pos["round"]
        self.docs.restore(rnd["docs"])
        self.tokenizer.tail = rnd["tail"]
        self.stats.clear()
        self.stats.update(rnd["stats"])
        self._round = rnd
        docs = self.tokenizer(self.docs.take(ROUND_PIECES, ROUND_CHARS))  # the same round
        self.packer.restore(docs, pos["popped"], pos["offset"], pos["drop"])
        self._window = pos["window"]

    def snapshot(self) -> dict[str, Any]:
        """Right after the last batch: small, JSON-serializable, no text."""
        if self._used == len(self._order):  # window used up: the next one starts here
            anchor, used = self._position_here(), 0
        else:
            anchor, used = self._anchor, self._used
        return {
            "anchor": anchor, "used": used, "rows": self._rows, "batches": self._batches,
            "finished": self._finished, "stats": {**self.stats, "tokens": self._tokens},
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Continue right after the batch ``snap`` was taken with."""
        self._restore_position(snap["anchor"])
        self._anchor = snap["anchor"]
        self._skip = snap["used"]
        self._win, self._order, self._used = None, np.zeros(0, np.int64), 0
        self._rows, self._batches = snap["rows"], snap["batches"]
        self._finished, self._exhausted = snap["finished"], False
        self._tokens = snap["stats"].get("tokens", 0)

    # ---------------------------------------------------------------------------- producing

    def _fill_window(self, stop: threading.Event) -> bool:
        """Pack the next window of rows and draw its order; False if stopped meanwhile."""
        self._anchor = self._position_here()
        W, L = self.window_rows, self.packer.seq_len
        win = empty_batch(W, L, self.pad_id)
        r = 0
        while r < W:
            if stop.is_set():
                return False
            if self.packer.fill_row(win, r):
                r += 1
            elif self._next_round():
                continue
            elif self.packer.flush(win, r):
                r += 1
            else:
                self._exhausted = True
                break
        if self.shuffle_rows:
            rng = np.random.default_rng([self.seed, self.process_index, _TAG_ROWS, self._window])
            self._order = rng.permutation(r)
        else:
            self._order = np.arange(r)
        self._win, self._used = win, min(self._skip, r)
        self._skip = 0
        self._window += 1
        return True

    def batches(self, stop: threading.Event) -> Iterator[tuple[Batch, dict[str, Any]]]:
        """Yield (batch, snapshot after it) until a finite stream ends or ``stop`` is set."""
        B = self.local_batch
        while not self._finished:
            batch = empty_batch(B, self.packer.seq_len, self.pad_id)
            r = 0
            while r < B:
                if self._used == len(self._order):
                    if self._exhausted:
                        break
                    if not self._fill_window(stop):
                        return
                    continue
                assert self._win is not None
                k = min(B - r, len(self._order) - self._used)
                rows = self._order[self._used:self._used + k]
                for key, v in batch.items():
                    v[r:r + k] = self._win[key][rows]
                r += k
                self._used += k
            if r == 0:
                self._finished = True
                return
            if self.mlm is not None:
                self.mlm(batch, self._rows)
            self._rows += r
            self._batches += 1
            self._tokens += int(np.count_nonzero(batch["segment_ids"]))
            self._finished = r < B
            yield batch, self.snapshot()
