"""One source on one host: document *pieces*, epoch after epoch, with a position, not texts.

A document reaches the pipeline as pieces of at most ``PIECE_CHARS`` characters, each with a
flag saying whether it is the document's last. Text files arrive already cut (``textfiles.py``
yields one `datasets` example per piece, flagged ``more``); an example of any other format
(one json/csv/parquet record) is cut here, with the same rule. So neither a long document nor
its tokens ever have to exist whole, whatever the format.

The position of a stream is small and JSON-safe: the epoch (its shard order is rebuilt from
(seed, source, epoch)), the `datasets` state of that epoch's unshuffled stream at some
example, how many examples were read past it, and how many characters of the example in
progress were handed out. Restoring reloads the `datasets` state, skips those examples and
re-cuts the example in progress from that character: the same pieces follow.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxlm.config import SourceConfig
from jaxlm.data.errors import DataError, DataWarning
from jaxlm.data.loading import load_base, read_error, source_label
from jaxlm.data.textfiles import MORE, PIECE_CHARS, find_cut

__all__ = ["DataError", "DataWarning", "SourceStream", "source_label"]

log = logging.getLogger(__name__)

_TAG_FILES = 3  # RNG stream tag: shard order per epoch


class SourceStream:
    """This host's documents of one source, as pieces, with an exact position.

    ``next_piece()`` returns ``(text, last)`` — the next piece and whether it ends its
    document — or ``None`` once the source is exhausted and ``repeat`` is off. ``state()`` /
    ``restore()`` capture the position (see the module docstring) and per-document flags.
    """

    def __init__(
        self, cfg: SourceConfig, index: int, seed: int, shuffle: bool, repeat: bool,
        process_index: int, process_count: int, stats: dict[str, int],
        piece_chars: int = PIECE_CHARS,
    ) -> None:
        self.cfg, self.index, self.seed = cfg, index, seed
        self.shuffle, self.repeat = shuffle, repeat
        self.process_index, self.process_count = process_index, process_count
        self.piece_chars = piece_chars
        self.label = source_label(cfg)
        self.stats = stats
        self._base, fmt = load_base(cfg)
        self._fmt = fmt
        self.num_shards: int = self._base.num_shards
        by_example = process_count > 1 and self.num_shards % process_count != 0
        # Not for the embedded corpus: one small file, read whole by every process in a
        # moment, and nobody can split it (the warning said so on every run of 2 processes).
        if by_example and cfg.path != "default":
            warnings.warn(
                f"source {self.label!r} has {self.num_shards} file(s)/shard(s), not a multiple of "
                f"{process_count} processes: every process reads every file and keeps 1 document "
                f"in {process_count} (slower); split the data into a multiple of "
                f"{process_count} files",
                DataWarning, stacklevel=2,
            )
        # Pieces of a text file are joined into documents, unless examples are dealt out
        # round robin to the processes (then each piece is a document of its own).
        self._joins = fmt == "text" and not by_example
        self.epoch = 0
        self.texts_in_epoch = 0
        self.exhausted = False
        self._ds: Any = None
        self._it: Iterator[dict[str, Any]] | None = None
        self._at: dict | None = None  # `datasets` state the position counts from (None: start)
        self._read = 0  # examples read past `_at`, the one in progress not included
        self._text: str | None = None  # the example in progress (being cut into pieces)
        self._off = 0  # characters of it already handed out
        self._more = False  # its document goes on in the next example
        self._resume_off = 0  # after restore(): characters of the next example already out
        self._in_doc = False  # a document has started and not ended
        self._flagged = False  # the current document was counted in utf8_replaced
        self._warned_utf8 = False
        self._check_first_example()

    # ----------------------------------------------------------------------------- reading

    def epoch_dataset(self, epoch: int) -> Any:
        """This host's unshuffled-by-`datasets` stream for ``epoch``: our shard order, our shard."""
        from datasets import concatenate_datasets
        from datasets.distributed import split_dataset_by_node

        ds, n = self._base, self.num_shards
        if self.shuffle and n > 1:
            rng = np.random.default_rng([self.seed, self.index, epoch, _TAG_FILES])
            ds = concatenate_datasets([ds.shard(n, int(p)) for p in rng.permutation(n)])
        if self.process_count > 1:
            ds = split_dataset_by_node(ds, self.process_index, self.process_count)
        if ds is self._base:  # a new object per epoch: a loaded state sticks to its object
            ds = ds.shard(1, 0)
        return ds

    def _check_first_example(self) -> None:
        """Fail at start-up, in one line, on an empty source or a missing text column."""
        try:
            first = next(iter(self.epoch_dataset(0)), None)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"source {self.label!r} cannot be read: "
                            f"{read_error(self.cfg, self._fmt, e)}") from None
        where = f" on process {self.process_index} of {self.process_count}" * (
            self.process_count > 1
        )
        if first is None:
            raise DataError(f"source {self.label!r} is empty{where}: it yields no documents")
        if self.cfg.text_column not in first:
            columns = [str(c) for c in first if not (self._joins and c == MORE)]
            raise DataError(
                f"source {self.label!r} has no column {self.cfg.text_column!r}; its columns are "
                f"{', '.join(columns)}; set text_column"
            )

    def _next_example(self) -> dict[str, Any] | None:
        """The next raw example of this epoch, or None at its end."""
        try:
            if self._it is None:
                self._ds = self.epoch_dataset(self.epoch)
                if self._at is not None:
                    self._ds.load_state_dict(copy.deepcopy(self._at))
                self._it = iter(self._ds)
                for _ in range(self._read):  # examples already read past `_at`
                    next(self._it)
            return next(self._it)
        except StopIteration:
            return None
        except DataError:
            raise
        except Exception as e:
            raise DataError(
                f"source {self.label!r} failed while reading (epoch {self.epoch}): "
                f"{read_error(self.cfg, self._fmt, e)}"
            ) from None

    def _value(self, example: dict[str, Any]) -> tuple[str | None, bool]:
        """(text, document goes on in the next example); text None for a missing value."""
        value = example.get(self.cfg.text_column)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if value is not None and not isinstance(value, str):
            raise DataError(
                f"source {self.label!r}: column {self.cfg.text_column!r} holds "
                f"{type(value).__name__}, not text; set text_column to a text column"
            )
        return value, bool(self._joins and example.get(MORE))

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def _start_example(self) -> bool:
        """Read the next example into ``_text``; False at the end of the epoch."""
        while True:
            example = self._next_example()
            if example is None:
                return False
            text, more = self._value(example)
            if self._resume_off:  # restore(): the example in progress, already counted
                self._text, self._off, self._more = text or "", self._resume_off, more
                self._resume_off = 0
                return True
            if not self._in_doc and not more and (text is None or not text.strip()):
                self._count("empty_skipped")
                self._read += 1
                continue
            self._text, self._off, self._more = text or "", 0, more
            return True

    def next_piece(self) -> tuple[str, bool] | None:
        """The next piece of this host's documents, rolling over epochs when ``repeat``."""
        while not self.exhausted:
            if self._text is None and not self._start_example():
                self._end_epoch()
                continue
            text, o, size = self._text, self._off, self.piece_chars
            assert text is not None
            if len(text) - o > size:
                end = find_cut(text, o, size)
                piece, self._off = text[o:end], end
                done = False
            else:
                piece, done = (text if o == 0 else text[o:]), True
            last = done and not self._more
            if not self._in_doc:
                self.texts_in_epoch += 1
                self._count("documents")
                self._flagged = False
            self._in_doc = not last
            if "\ufffd" in piece and not self._flagged:
                self._flagged = True
                self._count("utf8_replaced")
                self._warn_utf8()
            if done:
                self._text, self._off = None, 0
                self._read += 1
            return piece, last
        return None

    def next_text(self) -> str | None:
        """The next whole document (its pieces joined): for tools and tests, not for big data."""
        return join_pieces(self.next_piece)

    def _warn_utf8(self) -> None:
        if not self._warned_utf8:
            self._warned_utf8 = True
            msg = (f"source {self.label!r}: bytes that are not UTF-8 were replaced by U+FFFD "
                   "(documents affected are counted in Pipeline.stats['utf8_replaced'])")
            log.warning(msg)
            warnings.warn(msg, DataWarning, stacklevel=3)

    def _end_epoch(self) -> None:
        if self.texts_in_epoch == 0:
            raise DataError(
                f"source {self.label!r} has no non-empty document in column "
                f"{self.cfg.text_column!r} on process {self.process_index}"
            )
        self._ds, self._it, self._at, self._read = None, None, None, 0
        self._in_doc = False
        if self.repeat:
            self.epoch += 1
            self.texts_in_epoch = 0
        else:
            self.exhausted = True

    # ------------------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """Where this stream stands: small and JSON-serializable (no text)."""
        if self._ds is not None and self._text is None:  # between examples: count from here
            self._at, self._read = self._ds.state_dict(), 0
        return {
            "epoch": self.epoch,
            "texts_in_epoch": self.texts_in_epoch,
            "exhausted": self.exhausted,
            "datasets": self._at,
            "skip": self._read,
            "offset": self._off if self._text is not None else self._resume_off,
            "in_doc": self._in_doc,
            "flagged": self._flagged,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()``; the epoch's stream is reopened lazily on the next read."""
        self.epoch = int(state["epoch"])
        self.texts_in_epoch = int(state["texts_in_epoch"])
        self.exhausted = bool(state["exhausted"])
        self._at = copy.deepcopy(state["datasets"])
        self._read = int(state["skip"])
        self._resume_off = int(state["offset"])
        self._in_doc = bool(state["in_doc"])
        self._flagged = bool(state["flagged"])
        self._ds, self._it, self._text, self._off = None, None, None, 0


def join_pieces(next_piece: Any) -> str | None:
    """Pieces ``(text, last)`` from ``next_piece()`` joined into the next whole document."""
    parts: list[str] = []
    while (piece := next_piece()) is not None:
        parts.append(piece[0])
        if piece[1]:
            return "".join(parts)
    return None
