"""The document stream: a seeded weighted mixture of sources, then a seeded shuffle buffer.

Both are ours rather than `datasets`' (``interleave_datasets``, ``IterableDataset.shuffle``)
because ours put their *whole* state — which sources are left, the RNG states and the texts
sitting in the buffer — into ``state()``, and so resume exactly; `datasets`' shuffle buffer
loses and reorders documents on resume (DESIGN.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxlm.data.sources import SourceStream

_TAG_MIX, _TAG_BUFFER = 1, 2  # RNG stream tags


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
    """Documents of several sources, mixed by weight and shuffled, on one host.

    Mixture: each document is drawn from source *i* with probability ``w_i / sum(w)`` (weights
    count documents, as in ``datasets.interleave_datasets``); an exhausted source (only when
    ``repeat`` is off) leaves the draw. Shuffle: a buffer of ``buffer_size`` texts; each output
    is a uniformly random member, replaced by the next input; at the end the buffer drains in
    random order.
    """

    def __init__(
        self, sources: list[SourceStream], weights: list[float], seed: int, process_index: int,
        shuffle: bool, buffer_size: int,
    ) -> None:
        self.sources = sources
        self.weights = np.asarray(weights, dtype=np.float64)
        self.shuffle = shuffle
        self.buffer_size = buffer_size
        self.mix_rng = np.random.default_rng([seed, process_index, _TAG_MIX])
        self.buffer_rng = np.random.default_rng([seed, process_index, _TAG_BUFFER])
        self.buffer: list[str] = []

    def _draw(self) -> str | None:
        """The next document of the mixture (before shuffling); None when all are exhausted."""
        while True:
            live = [i for i, s in enumerate(self.sources) if not s.exhausted]
            if not live:
                return None
            if len(self.sources) == 1:
                i = 0
            else:
                cum = np.cumsum(self.weights[live])
                k = int(np.searchsorted(cum, self.mix_rng.random() * cum[-1], side="right"))
                i = live[min(k, len(live) - 1)]
            text = self.sources[i].next_text()
            if text is not None:
                return text

    def next_text(self) -> str | None:
        """The next document to tokenize, or None at the end of a finite stream."""
        if not self.shuffle:
            return self._draw()
        while len(self.buffer) < self.buffer_size:
            text = self._draw()
            if text is None:
                break
            self.buffer.append(text)
        if not self.buffer:
            return None
        i = int(self.buffer_rng.integers(len(self.buffer)))
        out = self.buffer[i]
        self.buffer[i] = self.buffer[-1]
        self.buffer.pop()
        return out

    def take(self, n: int) -> list[str]:
        """Up to ``n`` documents; fewer only at the end of a finite stream."""
        out: list[str] = []
        while len(out) < n:
            text = self.next_text()
            if text is None:
                break
            out.append(text)
        return out

    # ------------------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """Sources, RNGs and the buffered texts (a shallow list copy; texts are immutable)."""
        return {
            "sources": [s.state() for s in self.sources],
            "mix_rng": rng_state(self.mix_rng),
            "buffer_rng": rng_state(self.buffer_rng),
            "buffer": list(self.buffer),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue exactly from a :meth:`state`."""
        for src, st in zip(self.sources, state["sources"], strict=True):
            src.restore(st)
        set_rng_state(self.mix_rng, state["mix_rng"])
        set_rng_state(self.buffer_rng, state["buffer_rng"])
        self.buffer = list(state["buffer"])
