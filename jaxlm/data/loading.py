"""Where a source's data is and how `datasets` opens it: files, formats, hub datasets.

Every source, hub or local, goes through the same `datasets` streaming path::

    base  = load_dataset(..., streaming=True)              # unshuffled, N shards (files)
    epoch = concatenate_datasets([base.shard(N, p) for p in perm(seed, source, epoch)])
    mine  = split_dataset_by_node(epoch, process_index, process_count)

(the last two steps are in ``sources.py``). `datasets` only ever sees an *unshuffled* stream,
whose own ``state_dict`` resumes exactly (DESIGN.md: it is not exact across its shuffle
buffer, so we never use that).

Text files are read by a generator of ours (``textfiles.py``, through
``IterableDataset.from_generator``) because `datasets`' text builder ignores
``encoding_errors`` for gzipped files and reads a whole document at once; bytes that are not
UTF-8 are replaced by U+FFFD and counted everywhere, and files that are not text are refused.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from typing import Any

from jaxlm.config import SourceConfig
from jaxlm.data.errors import DataError
from jaxlm.data.hub import load_hub
from jaxlm.data.textfiles import COMPRESSION, text_examples
from jaxlm.data.tokenizer import default_corpus_files
from jaxlm.runtime.quiet import JSON_ERRORS

_FORMATS = {
    ".json": "json", ".jsonl": "json", ".ndjson": "json",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".tsv": "csv",
    ".txt": "text", ".text": "text", ".md": "text",
}
_GLOB_CHARS = "*?["


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def first_bad_json_line(path: str) -> tuple[int, str] | None:
    """(line number, problem) of the first non-blank line of a JSON Lines file (optionally
    compressed) that is not valid JSON; None if every line is."""
    opener = COMPRESSION.get(_split_suffix(path)[1] or "", open)
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                json.loads(line)
            except ValueError as e:
                what = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) \
                    else str(e)
                return lineno, what
    return None


def read_error(cfg: SourceConfig, fmt: str | None, err: BaseException) -> str:
    """One line on why a source could not be read. For malformed JSON Lines it names the
    file and line: the `datasets` reader's message counts rows of an internal block, not
    lines, and does not name the file (it logs the name, which :data:`JSON_ERRORS` keeps)."""
    if fmt == "json":  # (a failure path: reading the files again is affordable)
        files = resolve_files(cfg) or []
        named = JSON_ERRORS.last_file
        first = [f for f in files if named and os.path.realpath(f) == os.path.realpath(
            named.removeprefix("file://"))]
        for path in first or files:
            bad = first_bad_json_line(path)
            if bad is not None:
                return f"{path}, line {bad[0]}: not valid JSON ({bad[1]})"
    return one_line(err)


def source_label(cfg: SourceConfig) -> str:
    """A short human name for a source, used in every message about it."""
    if isinstance(cfg.path, str):
        return cfg.path if cfg.path != "default" else f"default:{cfg.split}"
    return cfg.path[0] + (f" (+{len(cfg.path) - 1} more)" if len(cfg.path) > 1 else "")


def _split_suffix(path: str) -> tuple[str, str | None]:
    """(format suffix, compression suffix) of a file name, e.g. ``x.jsonl.gz`` → (.jsonl, .gz)."""
    root, ext = os.path.splitext(path.lower())
    comp = ext if ext in COMPRESSION else None
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


def check_datasets_cache() -> None:
    """Refuse a Hugging Face datasets cache that cannot be written, in one line naming the
    variable: ``datasets`` writes there even for local files, and would otherwise fail as if
    the data file were bad."""
    import datasets

    _check_writable(str(datasets.config.HF_DATASETS_CACHE))


@functools.cache  # once per directory and process, not once per source opened
def _check_writable(cache: str) -> None:
    import tempfile

    try:
        os.makedirs(cache, exist_ok=True)
        tempfile.TemporaryFile(dir=cache).close()
    except OSError as e:
        raise DataError(f"the Hugging Face datasets cache {cache} is not writable "
                        f"({e.strerror}); set HF_DATASETS_CACHE to a writable directory, e.g. "
                        f"HF_DATASETS_CACHE={tempfile.gettempdir()}/hf-datasets") from None


def load_base(cfg: SourceConfig) -> tuple[Any, str | None]:
    """The unshuffled streaming ``datasets.IterableDataset`` of a source (all hosts, all
    shards) and its local format (None for a hub dataset)."""
    import datasets

    check_datasets_cache()
    files = resolve_files(cfg)
    label = source_label(cfg)
    if files is None:  # a hub dataset
        try:
            ds = load_hub(
                lambda: datasets.load_dataset(cfg.path, cfg.name, split=cfg.split,
                                              streaming=True),
                label, "point the source (data.train.N.path or data.eval.N.path) at local "
                "files such as data/*.jsonl.gz")
            return ds, None
        except DataError:
            raise
        except Exception as e:
            raise DataError(
                f"hub dataset {label!r} (name={cfg.name!r}, split={cfg.split!r}) cannot be loaded: "
                f"{one_line(e)}; if it is a local path, it does not exist"
            ) from None
    fmt = detect_format(cfg, files)
    if all(os.path.getsize(f) == 0 for f in files):
        raise DataError(f"source {label!r} is empty: its {len(files)} file(s) hold no data")
    if fmt == "text":
        return datasets.IterableDataset.from_generator(
            text_examples, gen_kwargs={"files": files, "sample_by": cfg.sample_by}
        ), fmt
    kwargs: dict[str, Any] = {}
    if fmt == "json":
        JSON_ERRORS.install()  # the reader logs the bad file's name; read_error uses it
        # The json builder only re-decodes when encoding != "utf-8": "utf_8" is the same codec
        # under another name, which switches on errors="replace" for bytes that are not UTF-8.
        kwargs = {"encoding": "utf_8", "encoding_errors": "replace"}
    elif fmt == "csv":
        kwargs = {"encoding_errors": "replace"}
        if all(_split_suffix(f)[0] == ".tsv" for f in files):
            kwargs["sep"] = "\t"
    try:
        ds = datasets.load_dataset(
            fmt, data_files={"train": files}, split="train", streaming=True, **kwargs
        )
        return ds, fmt
    except Exception as e:
        raise DataError(f"source {label!r} cannot be opened as {fmt}: {one_line(e)}") from None


