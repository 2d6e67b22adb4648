"""The document stream: a seeded weighted mixture of sources, as a stream of pieces.

Ours rather than `datasets`' ``interleave_datasets`` because ours puts its whole state (which
sources are left, the RNG state, which source is in the middle of a document) into
``state()``, and so resumes exactly. There is no document shuffle buffer: it held document
texts (gigabytes for a long document repeated over epochs) and shuffled nothing within a
document; packed rows are shuffled instead, after the packer (``producer.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxlm.data.sources import SourceStream, join_pieces

_TAG_MIX = 1  # RNG stream tag

Piece = tuple[str, bool]  # (text, ends its document)


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A JSON-safe copy of a PCG64 generator's state (128-bit integers as strings)."""
    st = rng.bit_generator.state
    return {
        "state": str(st["state"]["state"]), "inc": str(st["state"]["inc"]),
        "has_uint32": st["has_uint32"], "uinteger": st["uinteger"],
    }


def set_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int(state["state"]), "inc": int(state["inc"])},
        "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"]),
    }


class DocumentStream:
    """Documents of several sources, mixed by weight, on one host, as pieces.

    Each document is drawn from source *i* with probability ``w_i / sum(w)`` (weights count
    documents, as in ``datasets.interleave_datasets``); all its pieces follow before the next
    draw. An exhausted source (only when ``repeat`` is off) leaves the draw.
    """

    def __init__(self, sources: list[SourceStream], weights: list[float], seed: int,
                 process_index: int) -> None:
        self.sources = sources
        self.weights = np.asarray(weights, dtype=np.float64)
        self.mix_rng = np.random.default_rng([seed, process_index, _TAG_MIX])
        self.current: int | None = None  # the source in the middle of a document

    def _draw(self) -> int | None:
        live = [i for i, s in enumerate(self.sources) if not s.exhausted]
        if not live:
            return None
        if len(self.sources) == 1:
            return 0
        cum = np.cumsum(self.weights[live])
        k = int(np.searchsorted(cum, self.mix_rng.random() * cum[-1], side="right"))
        return live[min(k, len(live) - 1)]

    def next_piece(self) -> Piece | None:
        """The next piece, or None at the end of a finite stream."""
        while True:
            i = self.current if self.current is not None else self._draw()
            if i is None:
                return None
            piece = self.sources[i].next_piece()
            if piece is None:  # exhausted between documents: draw again
                self.current = None
                continue
            self.current = None if piece[1] else i
            return piece

    def take(self, max_pieces: int, max_chars: int) -> list[Piece]:
        """Pieces until ``max_pieces`` or ``max_chars``; fewer only at the end of the stream."""
        out: list[Piece] = []
        chars = 0
        while len(out) < max_pieces and chars < max_chars:
            piece = self.next_piece()
            if piece is None:
                break
            out.append(piece)
            chars += len(piece[0])
        return out

    def next_text(self) -> str | None:
        """The next whole document (pieces joined): for tools and tests, not for big data."""
        return join_pieces(self.next_piece)

    # ------------------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """Sources' positions, the mixture's RNG and the source mid-document: no text."""
        return {
            "sources": [s.state() for s in self.sources],
            "mix_rng": rng_state(self.mix_rng),
            "current": self.current,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue exactly from a :meth:`state`."""
        for src, st in zip(self.sources, state["sources"], strict=True):
            src.restore(st)
        set_rng_state(self.mix_rng, state["mix_rng"])
        self.current = state["current"]
