"""Labeled examples: read the splits with `datasets`, map labels to ids, tokenize.

:func:`load_splits` returns the train / validation / test splits of a
:class:`~jaxlm.config.LabeledDataConfig` (validation carved from train, seeded, when there is
none), :func:`label_names` the sorted label vocabulary of the training split (a hub
``ClassLabel`` keeps its own order), and :func:`encode` turns a split into token ids and
label ids. Encoders see ``[CLS] text [SEP] (text_pair [SEP])`` with token types 0/1;
decoders ``[BOS] text ([SEP] text_pair)`` — no trailing separator, so the last token (what
``last`` pooling reads) is the text's own, as in pretraining, where an end-of-text token is
only ever input at the start of a document. ``[CLS]``/``[SEP]`` are the tokenizer's own
where it has them (BERT), else its end-of-text token.

Every problem with the data is one :class:`~jaxlm.data.sources.DataError` line naming the
split, the file and the column.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from jaxlm.config import LabeledDataConfig, SourceConfig
from jaxlm.data.errors import DataError
from jaxlm.data.hub import load_hub
from jaxlm.data.loading import check_datasets_cache, detect_format, one_line, read_error
from jaxlm.data.tokenizer import special_ids
from jaxlm.runtime.quiet import JSON_ERRORS

SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"),
               "test": ("test",)}
LABELED_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".jsonl.gz", ".json.gz",
                    ".csv.gz")


DEMOS = {"demo": "demo", "demo:docstrings": "docstrings",  # finetune.data.path -> assets/
         "demo:docstring_qa": "docstring_qa"}


def demo_dir(name: str = "demo") -> str:
    """An embedded demo task (see its PROVENANCE.md): ``demo``, fortunes by category
    (classification); ``demo:docstrings``, a docstring's body -> its summary line (generate);
    ``demo:docstring_qa``, questions answered by a span of a docstring (span)."""
    return str(resources.files("jaxlm") / "assets" / DEMOS[name])


@dataclass
class Splits:
    """The datasets of each split and where they came from (for messages and the report)."""

    train: Any
    validation: Any
    test: Any | None
    origin: dict[str, str]


def _local_files(pattern: str) -> list[str]:
    pattern = os.path.expanduser(pattern)
    files = sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
    if not files:
        raise DataError(f"labeled data file {pattern!r} matches no readable file")
    return files


def _find_in_dir(directory: str, split: str) -> list[str]:
    for stem in SPLIT_NAMES[split]:
        found = [os.path.join(directory, stem + s) for s in LABELED_SUFFIXES
                 if os.path.isfile(os.path.join(directory, stem + s))]
        if found:
            return found[:1]
    return []


def _read_local(files: list[str], fmt: str) -> Any:
    import datasets


    builder = detect_format(SourceConfig(path=files, format=fmt), files)
    if builder == "text":
        raise DataError(f"labeled data must be csv, jsonl or parquet, not text: {files[0]}")
    kwargs: dict[str, Any] = {"delimiter": "\t"} if files[0].endswith((".tsv", ".tsv.gz")) else {}
    check_datasets_cache()
    datasets.disable_progress_bars()  # small files: a bar per split is noise
    cfg = SourceConfig(path=files, format=builder)
    if builder == "json":
        JSON_ERRORS.install()  # (the reader logs the bad file; read_error names it instead)
    try:
        return datasets.load_dataset(builder, data_files={"split": files}, split="split",
                                     keep_in_memory=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        raise DataError(f"cannot read labeled data {files[0]}: {read_error(cfg, builder, e)}") \
            from None


def _read_hub(d: LabeledDataConfig, split: str) -> Any:
    import datasets

    try:
        return load_hub(lambda: datasets.load_dataset(d.path, d.name, split=split), d.path,
                        "point finetune.data.path at local csv/jsonl/parquet files")
    except DataError:
        raise
    except ValueError as e:
        if "split" in str(e).lower():
            raise KeyError(split) from None
        raise DataError(f"hub dataset {d.path!r} split {split!r}: {one_line(e)}") from None
    except Exception as e:  # noqa: BLE001
        raise DataError(f"hub dataset {d.path!r} (name={d.name!r}) cannot be loaded: "
                        f"{one_line(e)}; if it is a local path, it does not exist") from None


def load_splits(d: LabeledDataConfig, seed: int) -> Splits:
    """Train, validation (carved from train when absent) and test (None when absent)."""
    path = demo_dir(d.path) if d.path in DEMOS else os.path.expanduser(d.path)
    origin: dict[str, str] = {}
    found: dict[str, Any] = {}
    local = os.path.exists(path) or any(c in path for c in "*?[") or d.path in DEMOS
    if local:
        for split in ("train", "validation", "test"):
            given = getattr(d, split) if split != "train" else None
            if given is not None:
                files = _local_files(given)
            elif os.path.isdir(path):
                files = _find_in_dir(path, split)
                if split == "train" and not files:
                    raise DataError(f"finetune.data.path {d.path!r} is a directory without a "
                                    f"train.(jsonl|csv|parquet) file")
            else:
                files = _local_files(path) if split == "train" else []
            if files and all(os.path.getsize(f) == 0 for f in files):
                raise DataError(f"the {split} split ({files[0]}) is empty")
            if files:
                found[split] = _read_local(files, d.format)
                origin[split] = files[0] + (f" (+{len(files) - 1})" if len(files) > 1 else "")
    else:
        for split in ("train", "validation", "test"):
            names = (getattr(d, split),) if getattr(d, split) else SPLIT_NAMES[split]
            for name in names:
                try:
                    found[split] = _read_hub(d, name)
                    origin[split] = f"{d.path}:{name}"
                    break
                except KeyError:
                    continue
            if split == "train" and "train" not in found:
                raise DataError(f"hub dataset {d.path!r} has no split {d.train!r}")
    for split, ds in found.items():
        if len(ds) == 0:
            raise DataError(f"the {split} split ({origin[split]}) is empty")
    train = found["train"]
    if "validation" not in found:
        if len(train) < 2:
            raise DataError(f"the train split ({origin['train']}) has {len(train)} example(s): "
                            "too few to carve a validation split from")
        parts = train.train_test_split(test_size=d.validation_fraction, seed=seed)
        train, found["validation"] = parts["train"], parts["test"]
        origin["validation"] = f"{d.validation_fraction:.0%} of {origin['train']} (seed {seed})"
    return Splits(train, found["validation"], found.get("test"), origin)


def column(ds: Any, name: str | None, split: str, origin: str, key: str) -> list[Any]:
    """The values of column ``name`` (setting ``finetune.data.<key>``) of a split."""
    if name not in ds.column_names:
        raise DataError(f"finetune.data.{key}={name!r} is not a column of the {split} split "
                        f"({origin}); its columns are: {', '.join(ds.column_names)}")
    return list(ds[name])


def _as_list(value: Any, sep: str | None) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if sep is not None:
        return [v.strip() for v in str(value).split(sep) if v.strip()]
    return [str(value)]


def _check_one_kind(raw: list[Any], column: str | None, origin: str) -> None:
    """Refuse labels that mix numbers and strings (JSON can): as classes they would all be
    strings, so ``1`` and ``"1"`` would silently become one class."""
    values = [x for v in raw for x in (v if isinstance(v, (list, tuple)) else [v])]
    number = next((v for v in values if isinstance(v, (int, float))), None)
    string = next((v for v in values if isinstance(v, str)), None)
    if number is not None and string is not None:
        raise DataError(f"finetune.data.label_column={column!r} in {origin} mixes numbers and "
                        f"strings (e.g. {number!r} and {string!r}); make every label a string "
                        "or every label a number")


def label_names(splits: Splits, d: LabeledDataConfig, problem: str) -> list[str]:
    """The label vocabulary from the training split: sorted, or a ClassLabel's own order."""
    if problem == "regression":
        return ["value"]
    feature = splits.train.features.get(d.label_column) if d.label_column else None
    raw = column(splits.train, d.label_column, "train", splits.origin["train"], "label_column")
    names_attr = getattr(feature, "names", None) or getattr(
        getattr(feature, "feature", None), "names", None)
    if names_attr:
        return list(names_attr)
    _check_one_kind(raw, d.label_column, splits.origin["train"])
    if problem == "multi_label":
        return sorted({n for v in raw for n in _as_list(v, d.label_separator)})
    if problem == "token":
        return sorted({str(t) for seq in raw for t in seq})
    return sorted({str(v) for v in raw})


@dataclass
class Encoded:
    """A tokenized split: per example its ids and token types (ragged), plus labels."""

    ids: list[np.ndarray]  # (n_i,) int32, specials included
    types: list[np.ndarray]  # (n_i,) int32
    labels: Any  # (N,) int32 | (N, C) f32 | (N,) f32 | list of (n_i,) int32 (token; -1 = none)
    texts: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(i) for i in self.ids), np.int64, len(self.ids))


def frame_ids(tokenizer: Any) -> tuple[int, int]:
    """(cls, sep) ids: the tokenizer's [CLS]/[SEP] where it has them, else end-of-text."""
    eos = special_ids(tokenizer).eos
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if eos is None and (cls_id is None or sep_id is None):
        raise DataError("the tokenizer has neither [CLS]/[SEP] nor an end-of-text token to "
                        "frame examples with")
    return (cls_id if cls_id is not None else eos), (sep_id if sep_id is not None else eos)


def _truncate(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int]]:
    """Longest-first truncation of a (text, text_pair) to ``budget`` tokens in total."""
    b = b or []
    la, lb = len(a), len(b)
    while la + lb > budget:
        if la >= lb:
            la -= 1
        else:
            lb -= 1
    return a[:la], b[:lb]


def encode_texts(tokenizer: Any, texts: list[str], pairs: list[str] | None,
                 max_length: int, causal: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Framed ids and token types for each text (and pair): ``[CLS] a [SEP] (b [SEP])`` for
    an encoder, ``[BOS] a ([SEP] b)`` for a causal decoder (see the module docstring)."""
    cls_id, sep_id = frame_ids(tokenizer)
    enc = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    a_ids = [e.ids for e in enc(texts, add_special_tokens=False)]
    b_ids = [e.ids for e in enc(pairs, add_special_tokens=False)] if pairs else None
    ids, types = [], []
    for i, a in enumerate(a_ids):
        b = b_ids[i] if b_ids is not None else None
        specials = (1 if b is None else 2) if causal else (2 if b is None else 3)
        a, bb = _truncate(a, b, max_length - specials)
        if causal:
            seq = [cls_id, *a] + ([sep_id, *bb] if b is not None else [])
        else:
            seq = [cls_id, *a, sep_id] + ([*bb, sep_id] if b is not None else [])
        ids.append(np.asarray(seq, np.int32))
        first = len(a) + (1 if causal and b is None else 2)
        types.append(np.asarray([0] * first + [1] * (len(seq) - first), np.int32))
    return ids, types


def encode(ds: Any, split: str, origin: str, tokenizer: Any, d: LabeledDataConfig,
           problem: str, names: list[str], max_length: int, causal: bool,
           with_labels: bool = True) -> Encoded:
    """Tokenize a split and map its labels to ids (labels unseen in training are an error)."""
    texts = column(ds, d.text_column, split, origin, "text_column")
    pairs = (column(ds, d.text_pair_column, split, origin, "text_pair_column")
             if d.text_pair_column else None)
    index = {n: i for i, n in enumerate(names)}
    raw = column(ds, d.label_column, split, origin, "label_column") if with_labels else None
    if problem == "token":
        return _encode_tokens(texts, raw, tokenizer, index, split, origin, max_length, causal)
    texts = ["" if t is None else str(t) for t in texts]
    pairs = ["" if t is None else str(t) for t in pairs] if pairs is not None else None
    ids, types = encode_texts(tokenizer, texts, pairs, max_length, causal)
    labels: Any = None
    if raw is not None:
        if problem == "regression":
            try:
                labels = np.asarray([float(v) for v in raw], np.float32)
            except (TypeError, ValueError):
                raise DataError(f"finetune.problem=regression needs numeric labels; the {split} "
                                f"split ({origin}) has e.g. {raw[0]!r}") from None
        else:
            lists = [_as_list(v, d.label_separator) for v in raw] if problem == "multi_label" \
                else [[str(v)] for v in raw]
            unseen = sorted({n for ls in lists for n in ls} - index.keys())
            if unseen:
                raise DataError(f"the {split} split ({origin}) has labels not seen in training: "
                                f"{', '.join(unseen[:10])}; training labels: "
                                f"{', '.join(names[:20])}")
            if problem == "multi_label":
                labels = np.zeros((len(lists), len(names)), np.float32)
                for r, ls in enumerate(lists):
                    labels[r, [index[n] for n in ls]] = 1.0
            else:
                labels = np.asarray([index[ls[0]] for ls in lists], np.int32)
    return Encoded(ids, types, labels, texts)


def _encode_tokens(words: list[Any], raw: list[Any] | None, tokenizer: Any,
                   index: dict[str, int], split: str, origin: str,
                   max_length: int, causal: bool) -> Encoded:
    """Token classification: pre-split words, one label per word on its first sub-token."""
    cls_id, sep_id = frame_ids(tokenizer)
    if not all(isinstance(w, (list, tuple)) for w in words):
        raise DataError(f"finetune.problem=token needs the text column to hold lists of words; "
                        f"the {split} split ({origin}) has e.g. {words[0]!r}")
    encs = tokenizer.encode_batch([list(map(str, w)) for w in words], is_pretokenized=True,
                                  add_special_tokens=False)
    ids, types, labels = [], [], []
    end = [] if causal else [sep_id]
    for r, e in enumerate(encs):
        keep = max_length - 1 - len(end)
        body, wids = e.ids[:keep], e.word_ids[:keep]
        ids.append(np.asarray([cls_id, *body, *end], np.int32))
        types.append(np.zeros(len(body) + 1 + len(end), np.int32))
        if raw is None:
            continue
        tags = [str(t) for t in raw[r]]
        if len(tags) != len(words[r]):
            raise DataError(f"the {split} split ({origin}) row {r}: {len(words[r])} words but "
                            f"{len(tags)} labels")
        unseen = sorted(set(tags) - index.keys())
        if unseen:
            raise DataError(f"the {split} split ({origin}) has labels not seen in training: "
                            f"{', '.join(unseen[:10])}")
        lab, prev = [-1], None
        for w in wids:
            lab.append(index[tags[w]] if w is not None and w != prev else -1)
            prev = w
        labels.append(np.asarray([*lab, *([-1] * len(end))], np.int32))
    return Encoded(ids, types, labels if raw is not None else None,
                   [" ".join(map(str, w)) for w in words])
