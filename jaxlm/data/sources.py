"""Text sources: one ``SourceConfig`` → a per-host, per-epoch stream of document texts.

Every source, hub or local, goes through the same `datasets` streaming path::

    base  = load_dataset(..., streaming=True)              # unshuffled, N shards (files)
    epoch = concatenate_datasets([base.shard(N, p) for p in perm(seed, source, epoch)])
    mine  = split_dataset_by_node(epoch, process_index, process_count)

The shard permutation is ours (seeded, the same on every host), so each epoch reads the files
in a fresh order while `datasets` only ever sees an *unshuffled* stream, whose own
``state_dict`` resumes exactly (DESIGN.md: it is not exact across its shuffle buffer, so we
never use that). Document-level shuffling is done later, by our own buffer (``stream.py``).

Text files are read by a small generator of ours (``IterableDataset.from_generator``) because
`datasets`' text builder ignores ``encoding_errors`` for gzipped files; bytes that are not
UTF-8 are replaced by U+FFFD and counted everywhere, never a crash.
"""

from __future__ import annotations

import bz2
import copy
import glob
import gzip
import io
import logging
import lzma
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxlm.config import SourceConfig
from jaxlm.data.tokenizer import default_corpus_files
from jaxlm.errors import UserError

log = logging.getLogger(__name__)

_COMPRESSION = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_FORMATS = {
    ".json": "json", ".jsonl": "json", ".ndjson": "json",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".tsv": "csv",
    ".txt": "text", ".text": "text", ".md": "text",
}
_GLOB_CHARS = "*?["
_TAG_FILES = 3  # RNG stream tag: shard order per epoch


class DataError(UserError):
    """Bad input data or data settings; the message is one line saying what and how to fix it."""


class DataWarning(UserWarning):
    """Data that is suboptimal, or was repaired and counted; training goes on."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def source_label(cfg: SourceConfig) -> str:
    """A short human name for a source, used in every message about it."""
    if isinstance(cfg.path, str):
        return cfg.path if cfg.path != "default" else f"default:{cfg.split}"
    return cfg.path[0] + (f" (+{len(cfg.path) - 1} more)" if len(cfg.path) > 1 else "")


def _split_suffix(path: str) -> tuple[str, str | None]:
    """(format suffix, compression suffix) of a file name, e.g. ``x.jsonl.gz`` → (.jsonl, .gz)."""
    root, ext = os.path.splitext(path.lower())
    comp = ext if ext in _COMPRESSION else None
    if comp:
        root, ext = os.path.splitext(root)
    return ext, comp


def _looks_local(path: str) -> bool:
    return (
        any(c in path for c in _GLOB_CHARS)
        or path.startswith((".", "/", "~"))
        or os.path.exists(os.path.expanduser(path))
        or _split_suffix(path)[0] in _FORMATS
    )


def resolve_files(cfg: SourceConfig) -> list[str] | None:
    """The sorted local files of a source, or ``None`` for a hub dataset.

    Raises DataError when a local path, directory or glob matches no readable file.
    """
    if cfg.path == "default":
        corpus = default_corpus_files()
        if cfg.split not in corpus:
            raise DataError(
                f"source 'default' has splits {sorted(corpus)}, not split={cfg.split!r}"
            )
        return [corpus[cfg.split]]
    paths = [cfg.path] if isinstance(cfg.path, str) else list(cfg.path)
    if isinstance(cfg.path, str) and not _looks_local(cfg.path):
        return None
    files: list[str] = []
    for pattern in paths:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            found = [
                f for f in glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
                if os.path.isfile(f) and _split_suffix(f)[0] in _FORMATS
            ]
        else:
            found = [f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f)]
        if not found:
            what = "directory" if os.path.isdir(pattern) else "path or glob"
            raise DataError(f"data source {what} {pattern!r} matches no readable file")
        files.extend(sorted(found))
    return sorted(dict.fromkeys(os.path.abspath(f) for f in files))


def detect_format(cfg: SourceConfig, files: list[str]) -> str:
    """The `datasets` builder for local files: json, parquet, csv or text."""
    if cfg.format != "auto":
        return cfg.format
    kinds = {_FORMATS.get(_split_suffix(f)[0]) for f in files}
    if None in kinds:
        bad = next(f for f in files if _split_suffix(f)[0] not in _FORMATS)
        raise DataError(
            f"cannot tell the format of {bad!r} from its suffix; set format= "
            f"(json, parquet, csv, text) on source {source_label(cfg)!r}"
        )
    if len(kinds) > 1:
        raise DataError(
            f"source {source_label(cfg)!r} mixes formats {sorted(kinds)}; "  # type: ignore[type-var]
            "give each format its own source"
        )
    return kinds.pop()  # type: ignore[return-value]


def _open_text(path: str) -> io.TextIOBase:
    opener = _COMPRESSION.get(_split_suffix(path)[1] or "", open)
    return io.TextIOWrapper(opener(path, "rb"), encoding="utf-8", errors="replace", newline=None)


def _text_examples(files: list[str], sample_by: str) -> Iterator[dict[str, str]]:
    """Examples ``{"text": ...}`` of text files: whole files, blank-line blocks, or lines."""
    for path in files:
        with _open_text(path) as f:
            if sample_by == "document":
                yield {"text": f.read()}
            elif sample_by == "line":
                for line in f:
                    yield {"text": line.rstrip("\n")}
            else:
                block: list[str] = []
                for line in f:
                    if line.strip():
                        block.append(line)
                    elif block:
                        yield {"text": "".join(block).rstrip("\n")}
                        block = []
                if block:
                    yield {"text": "".join(block).rstrip("\n")}


def load_base(cfg: SourceConfig) -> Any:
    """The unshuffled streaming ``datasets.IterableDataset`` of a source (all hosts, all shards)."""
    import datasets

    files = resolve_files(cfg)
    label = source_label(cfg)
    if files is None:  # a hub dataset
        try:
            return datasets.load_dataset(cfg.path, cfg.name, split=cfg.split, streaming=True)
        except (ConnectionError, TimeoutError) as e:
            raise DataError(
                f"hub dataset {label!r} cannot be reached ({_one_line(e)}); this machine may be "
                "offline: point the source (data.train.N.path or data.eval.N.path) at local "
                "files such as data/*.jsonl.gz, and set "
                "HF_HUB_OFFLINE=1 to fail fast instead of retrying"
            ) from None
        except Exception as e:
            raise DataError(
                f"hub dataset {label!r} (name={cfg.name!r}, split={cfg.split!r}) cannot be loaded: "
                f"{_one_line(e)}; if it is a local path, it does not exist"
            ) from None
    fmt = detect_format(cfg, files)
    if all(os.path.getsize(f) == 0 for f in files):
        raise DataError(f"source {label!r} is empty: its {len(files)} file(s) hold no data")
    if fmt == "text":
        return datasets.IterableDataset.from_generator(
            _text_examples, gen_kwargs={"files": files, "sample_by": cfg.sample_by}
        )
    kwargs: dict[str, Any] = {}
    if fmt == "json":
        # The json builder only re-decodes when encoding != "utf-8": "utf_8" is the same codec
        # under another name, which switches on errors="replace" for bytes that are not UTF-8.
        kwargs = {"encoding": "utf_8", "encoding_errors": "replace"}
    elif fmt == "csv":
        kwargs = {"encoding_errors": "replace"}
        if all(_split_suffix(f)[0] == ".tsv" for f in files):
            kwargs["sep"] = "\t"
    try:
        return datasets.load_dataset(
            fmt, data_files={"train": files}, split="train", streaming=True, **kwargs
        )
    except Exception as e:
        raise DataError(f"source {label!r} cannot be opened as {fmt}: {_one_line(e)}") from None


class SourceStream:
    """This host's documents of one source, epoch after epoch, with an exact position.

    ``next_text()`` returns the next non-empty document text, or ``None`` once the source is
    exhausted and ``repeat`` is off. ``state()``/``restore()`` capture the epoch, the
    per-epoch `datasets` stream state and counters; all small and JSON-serializable.
    """

    def __init__(
        self, cfg: SourceConfig, index: int, seed: int, shuffle: bool, repeat: bool,
        process_index: int, process_count: int, stats: dict[str, int],
    ) -> None:
        self.cfg, self.index, self.seed = cfg, index, seed
        self.shuffle, self.repeat = shuffle, repeat
        self.process_index, self.process_count = process_index, process_count
        self.label = source_label(cfg)
        self.stats = stats
        self._base = load_base(cfg)
        self.num_shards: int = self._base.num_shards
        if process_count > 1 and self.num_shards % process_count:
            warnings.warn(
                f"source {self.label!r} has {self.num_shards} file(s)/shard(s), not a multiple of "
                f"{process_count} processes: every process reads every file and keeps 1 document "
                f"in {process_count} (slower); split the data into a multiple of "
                f"{process_count} files",
                DataWarning, stacklevel=2,
            )
        self.epoch = 0
        self.texts_in_epoch = 0
        self.exhausted = False
        self._ds: Any = None
        self._it: Iterator[dict[str, Any]] | None = None
        self._pending_ds_state: dict | None = None
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
        return ds

    def _check_first_example(self) -> None:
        """Fail at start-up, in one line, on an empty source or a missing text column."""
        try:
            first = next(iter(self.epoch_dataset(0)), None)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"source {self.label!r} cannot be read: {_one_line(e)}") from None
        where = f" on process {self.process_index} of {self.process_count}" * (
            self.process_count > 1
        )
        if first is None:
            raise DataError(f"source {self.label!r} is empty{where}: it yields no documents")
        if self.cfg.text_column not in first:
            raise DataError(
                f"source {self.label!r} has no column {self.cfg.text_column!r}; its columns are "
                f"{', '.join(map(str, first))}; set text_column"
            )

    def _extract(self, example: dict[str, Any]) -> str | None:
        value = example.get(self.cfg.text_column)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if value is None or (isinstance(value, str) and not value.strip()):
            self.stats["empty_skipped"] = self.stats.get("empty_skipped", 0) + 1
            return None
        if not isinstance(value, str):
            raise DataError(
                f"source {self.label!r}: column {self.cfg.text_column!r} holds "
                f"{type(value).__name__}, not text; set text_column to a text column"
            )
        if "\ufffd" in value:
            self.stats["utf8_replaced"] = self.stats.get("utf8_replaced", 0) + 1
            if not self._warned_utf8:
                self._warned_utf8 = True
                msg = (f"source {self.label!r}: bytes that are not UTF-8 were replaced by U+FFFD "
                       "(documents affected are counted in Pipeline.stats['utf8_replaced'])")
                log.warning(msg)
                warnings.warn(msg, DataWarning, stacklevel=2)
        return value

    def next_text(self) -> str | None:
        """The next non-empty document of this host, rolling over epochs when ``repeat``."""
        while not self.exhausted:
            if self._it is None:
                self._ds = self.epoch_dataset(self.epoch)
                if self._pending_ds_state is not None:
                    self._ds.load_state_dict(self._pending_ds_state)
                    self._pending_ds_state = None
                self._it = iter(self._ds)
            try:
                example = next(self._it)
            except StopIteration:
                self._end_epoch()
                continue
            except DataError:
                raise
            except Exception as e:
                raise DataError(
                    f"source {self.label!r} failed while reading (epoch {self.epoch}): "
                    f"{_one_line(e)}"
                ) from None
            text = self._extract(example)
            if text is not None:
                self.texts_in_epoch += 1
                self.stats["documents"] = self.stats.get("documents", 0) + 1
                return text
        return None

    def _end_epoch(self) -> None:
        if self.texts_in_epoch == 0:
            raise DataError(
                f"source {self.label!r} has no non-empty document in column "
                f"{self.cfg.text_column!r} on process {self.process_index}"
            )
        self._ds, self._it = None, None
        if self.repeat:
            self.epoch += 1
            self.texts_in_epoch = 0
        else:
            self.exhausted = True

    # ------------------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """Where this stream stands: a JSON-serializable copy."""
        ds_state = self._ds.state_dict() if self._ds is not None else self._pending_ds_state
        return {
            "epoch": self.epoch,
            "texts_in_epoch": self.texts_in_epoch,
            "exhausted": self.exhausted,
            "datasets": copy.deepcopy(ds_state),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()``; the epoch's stream is rebuilt lazily on the next read."""
        self.epoch = int(state["epoch"])
        self.texts_in_epoch = int(state["texts_in_epoch"])
        self.exhausted = bool(state["exhausted"])
        self._pending_ds_state = copy.deepcopy(state["datasets"])
        self._ds, self._it = None, None
