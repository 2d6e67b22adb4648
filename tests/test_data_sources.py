"""Sources: every local format round-trips; bad input fails in one line or is counted."""

from __future__ import annotations

import csv
import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datahelpers import (
    data_cfg,
    decode_docs,
    make_texts,
    pipeline,
    take,
    tokenizer,
    write_jsonl,
)

from jaxlm.config import DataConfig, SourceConfig
from jaxlm.data.pipeline import DataError, Pipeline, build_pipeline, check_vocab
from jaxlm.data.sources import DataWarning, SourceStream
from jaxlm.data.stream import DocumentStream

TEXTS = make_texts(40, seed=1, max_words=60) + ["Unicode: café — “quoted” ✓ 日本語, with, commas"]


def _roundtrip(path, **src) -> list[str]:
    p = pipeline(None, sources=[SourceConfig(path=str(path), **src)], shuffle=False)
    return decode_docs(take(p))


def test_jsonl_and_gz(tmp_path):
    assert _roundtrip(write_jsonl(tmp_path / "a.jsonl", TEXTS)) == TEXTS
    assert _roundtrip(write_jsonl(tmp_path / "b.jsonl.gz", TEXTS)) == TEXTS


def test_json_array_and_custom_column(tmp_path):
    rows = [{"body": t, "id": i} for i, t in enumerate(TEXTS)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    assert _roundtrip(tmp_path / "a.json", text_column="body") == TEXTS


def test_parquet(tmp_path):
    pq.write_table(pa.table({"text": TEXTS, "id": list(range(len(TEXTS)))}), tmp_path / "a.parquet",
                   row_group_size=7)
    assert _roundtrip(tmp_path / "a.parquet") == TEXTS


def test_csv_tsv_and_gz(tmp_path):
    for name, delim in [("a.csv", ","), ("b.tsv", "\t"), ("c.csv.gz", ",")]:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(tmp_path / name, "wt", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter=delim)
            w.writerow(["id", "text"])
            w.writerows(enumerate(TEXTS))
        assert _roundtrip(tmp_path / name) == TEXTS, name


def test_text_files_document_paragraph_line(tmp_path):
    d = tmp_path / "txt"
    d.mkdir()
    (d / "a.txt").write_text("\n\n".join(TEXTS[:20]))
    with gzip.open(d / "b.txt.gz", "wt") as f:
        f.write("\n\n".join(TEXTS[20:]))
    assert _roundtrip(d / "*.txt*", sample_by="paragraph") == TEXTS
    assert _roundtrip(d, sample_by="document") == ["\n\n".join(TEXTS[:20]), "\n\n".join(TEXTS[20:])]
    lines = [t for t in "\n\n".join(TEXTS[:20]).split("\n") if t]
    assert _roundtrip(d / "a.txt", sample_by="line") == lines


def test_glob_list_and_default_corpus(tmp_path):
    write_jsonl(tmp_path / "x1.jsonl", TEXTS[:10])
    write_jsonl(tmp_path / "x2.jsonl", TEXTS[10:])
    assert _roundtrip(tmp_path / "x*.jsonl") == TEXTS
    p = pipeline(None, sources=[SourceConfig(path=[str(tmp_path / "x2.jsonl"),
                                                   str(tmp_path / "x1.jsonl")])], shuffle=False)
    assert decode_docs(take(p)) == TEXTS  # files are read in sorted order when unshuffled
    valid = Pipeline(data_cfg(shuffle_rows=0), [SourceConfig(split="valid")], tokenizer(), 4,
                     repeat=False)
    assert len(decode_docs(take(valid))) == valid.stats["documents"] > 10
    with build_pipeline(DataConfig(seq_len=64), "train", 2) as train:  # the shipped defaults
        batch = next(train)
    assert all(v.shape == (2, 64) for v in batch.values()) and batch["weights"].sum() > 100


# --------------------------------------------------------------------------------- bad input


def _one_line_error(fn, match: str) -> str:
    with pytest.raises(DataError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_no_match_unknown_column_empty_and_mixed(tmp_path):
    _one_line_error(lambda: _roundtrip(tmp_path / "nothing-*.jsonl"), "matches no readable file")
    _one_line_error(lambda: _roundtrip(tmp_path / "missing.jsonl"), "matches no readable file")
    f = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    msg = _one_line_error(lambda: _roundtrip(f, text_column="body"), "no column 'body'")
    assert "text" in msg  # lists the columns there are
    (tmp_path / "empty.jsonl").write_text("")
    _one_line_error(lambda: _roundtrip(tmp_path / "empty.jsonl"), "is empty")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": "  "}\n')
    _one_line_error(lambda: _roundtrip(tmp_path / "blank.jsonl"), "no non-empty document")
    (tmp_path / "b.txt").write_text("hello")
    _one_line_error(lambda: _roundtrip(tmp_path / "*.*"), "mixes formats")
    (tmp_path / "c.xml").write_text("<a/>")
    _one_line_error(lambda: _roundtrip(tmp_path / "c.xml"), "set format=")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    _one_line_error(lambda: _roundtrip(tmp_path / "bad.jsonl"), "bad.jsonl")
    (tmp_path / "num.jsonl").write_text('{"text": 3}\n')
    _one_line_error(lambda: _roundtrip(tmp_path / "num.jsonl"), "not text")


def test_hub_name_offline_is_one_line_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = _one_line_error(lambda: _roundtrip("someone/not-a-local-dataset"), "hub dataset")
    assert "local files" in msg and "offline mode is on (HF_HUB_OFFLINE=1" in msg
    assert "set HF_HUB_OFFLINE=1" not in msg  # it is set already


def test_bytes_that_are_not_utf8_are_replaced_and_counted(tmp_path):
    bad = b"caf\xe9 \xff\xfe broken"
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "' + bad + b'"}\n')
    (tmp_path / "b.txt").write_bytes(b"fine\n\n" + bad)
    with gzip.open(tmp_path / "c.csv.gz", "wb") as f:
        f.write(b"text\nfine\n" + bad + b"\n")
    for name, kw in [("a.jsonl", {}), ("b.txt", {"sample_by": "paragraph"}), ("c.csv.gz", {})]:
        p = pipeline(None, sources=[SourceConfig(path=str(tmp_path / name), **kw)], shuffle=False)
        with pytest.warns(DataWarning, match="not UTF-8"):
            docs = decode_docs(take(p))
        assert docs[0] == "fine" and "broken" in docs[1] and "\ufffd" in docs[1], name
        assert p.stats["utf8_replaced"] == 1, name


def test_config_and_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="model.vocab_size"):
        check_vocab(tokenizer(), 1000)
    check_vocab(tokenizer(), 4096)
    with pytest.raises(DataError, match="data.eval is null"):
        build_pipeline(data_cfg(eval=None), "eval", 4)
    f = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    with pytest.raises(DataError, match="process_index"):
        pipeline(str(f), process_index=2, process_count=2)


# ----------------------------------------------------------------------------------- mixture


def test_mixture_honours_weights(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", make_texts(50, seed=2, prefix="A"))
    b = write_jsonl(tmp_path / "b.jsonl", make_texts(50, seed=3, prefix="B"))
    stats: dict[str, int] = {}
    cfgs = [SourceConfig(path=str(a), weight=3.0), SourceConfig(path=str(b), weight=1.0)]
    streams = [SourceStream(c, i, 0, True, True, 0, 1, stats) for i, c in enumerate(cfgs)]
    mix = DocumentStream(streams, [c.weight for c in cfgs], seed=0, process_index=0)
    docs = [mix.next_text() for _ in range(4000)]
    share_a = sum(t.startswith("A") for t in docs) / len(docs)
    assert abs(share_a - 0.75) < 0.03, share_a
    # with repeat off, both sources are read exactly once, however the weights fall
    streams = [SourceStream(c, i, 0, True, False, 0, 1, stats) for i, c in enumerate(cfgs)]
    mix = DocumentStream(streams, [3.0, 1.0], 0, 0)
    once = [t for t in iter(mix.next_text, None)]
    assert sorted(once) == sorted(make_texts(50, 2, "A") + make_texts(50, 3, "B"))


def test_epochs_reshuffle_file_order(tmp_path):
    texts = make_texts(60, seed=4)
    files = [write_jsonl(tmp_path / f"s{k}.jsonl", texts[k::6]) for k in range(6)]
    src = SourceConfig(path=str(tmp_path / "s*.jsonl"))
    stream = SourceStream(src, 0, 0, True, True, 0, 1, {})
    epochs = [[stream.next_text() for _ in range(60)] for _ in range(3)]
    assert all(sorted(e) == sorted(texts) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert len(files) == 6 and os.path.exists(files[0])
