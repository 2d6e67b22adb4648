"""Exact resume with shuffling on: a restarted pipeline yields exactly the uninterrupted batches."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from datahelpers import data_cfg, decode_docs, make_texts, pipeline, take, write_shards

from jaxlm.config import SourceConfig
from jaxlm.data.pipeline import DataError, DataWarning, build_pipeline

N = 60  # batches: about three epochs of the data below


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    write_shards(d, make_texts(60, seed=11, max_words=70), 5, prefix="a")
    write_shards(d, make_texts(30, seed=12, max_words=20, prefix="B"), 2, prefix="b")
    return d


def _make(shards, mix: bool = False, **kw):
    sources = [SourceConfig(path=str(shards / "a-*.jsonl"), weight=2.0)]
    if mix:
        sources.append(SourceConfig(path=str(shards / "b-*.jsonl"), weight=1.0))
    return pipeline(None, sources=sources, repeat=True, shuffle=True, **kw)


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        for k in x:
            assert np.array_equal(x[k], y[k]), f"batch {i}, {k} differs"


def _resume(shards, cut: int, n: int, **kw) -> list[dict]:
    p = _make(shards, **kw)
    head = take(p, cut)
    state = json.loads(json.dumps(p.state_dict()))  # through JSON, as in a checkpoint
    p.close()
    q = _make(shards, **kw)
    q.load_state_dict(state)
    tail = take(q, n - cut)
    q.close()
    return head + tail


@pytest.mark.parametrize("kw", [{}, {"mix": True}, {"mode": "mlm"}, {"mode": "pad", "mix": True}],
                         ids=["pack", "mixture", "mlm", "pad"])
def test_resume_equals_uninterrupted_at_several_cuts(shards, kw):
    p = _make(shards, **kw)
    full = take(p, N)
    p.close()
    assert all(b["weights"].sum() > 0 for b in full)
    for cut in (0, 1, 7, 23, 44):
        _assert_same(_resume(shards, cut, N, **kw), full)


def run_ahead(p) -> None:
    """Until the producer has filled the prefetch queue (it is ahead of the consumer): the
    state then taken must still be the consumer's, whatever the machine's speed."""
    deadline = time.monotonic() + 120
    while not p._queue.full():
        assert time.monotonic() < deadline, "the producer never filled its queue"
        time.sleep(0.005)


def test_chained_resume_and_rewind_in_place(shards):
    p = _make(shards, mix=True, prefetch=8)
    full = take(p, N)
    run_ahead(p)  # closing a producer that is ahead
    p.close()
    p = _make(shards, mix=True, prefetch=8)
    take(p, 10)
    run_ahead(p)
    s10 = p.state_dict()
    q = _make(shards, mix=True)
    q.load_state_dict(s10)
    take(q, 15)
    run_ahead(q)
    s25 = q.state_dict()
    r = _make(shards, mix=True)
    r.load_state_dict(s25)
    _assert_same(take(r, N - 25), full[25:])
    p.load_state_dict(s10)  # rewind a running pipeline in place
    _assert_same(take(p, 20), full[10:30])
    p.close()  # close, then carry on where it stopped
    _assert_same(take(p, 5), full[30:35])
    for x in (p, q, r):
        x.close()


def test_state_is_small_json_and_checked(shards):
    with _make(shards) as p:
        take(p, 3)
        state = p.state_dict()
    assert len(json.dumps(state)) < 100_000
    assert state["batches"] == 3 and state["rows"] == 12
    other = _make(shards, seq_len=48)
    with pytest.raises(DataError, match="seq_len"):
        other.load_state_dict(state)
    with pytest.warns(DataWarning, match="not a multiple"):
        other = pipeline(None, sources=[SourceConfig(path=str(shards / "a-*.jsonl"), weight=2.0)],
                         repeat=True, process_index=1, process_count=2)
    with pytest.raises(DataError, match="process_index"):
        other.load_state_dict(state)


def test_finite_eval_stream_and_its_resume(shards, tmp_path):
    data = data_cfg(eval=[SourceConfig(path=str(shards / "a-*.jsonl"))], shuffle=True)
    ev = build_pipeline(data, "eval", 4)
    full = take(ev)
    assert next(ev, None) is None  # one pass, then stays exhausted
    last = full[-1]
    assert (last["weights"].sum(axis=1) > 0).any()
    pad = ev.padding_batch()
    assert all(pad[k].shape == last[k].shape and pad[k].dtype == last[k].dtype for k in pad)
    assert pad["weights"].sum() == 0
    assert sorted(decode_docs(full)) == sorted(make_texts(60, seed=11, max_words=70))
    assert decode_docs(full) == decode_docs(take(build_pipeline(data, "eval", 4)))  # unshuffled
    ev = build_pipeline(data, "eval", 4)
    take(ev, 5)
    st = ev.state_dict()
    ev.close()
    ev2 = build_pipeline(data, "eval", 4)
    ev2.load_state_dict(st)
    _assert_same(take(ev2), full[5:])


@pytest.mark.parametrize("fmt", ["txt", "parquet", "csv"])
def test_resume_other_formats(tmp_path, fmt):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = make_texts(48, seed=13, max_words=50)
    for k in range(3):
        part, path = texts[k::3], tmp_path / f"p{k}.{fmt}"
        if fmt == "txt":
            path.write_text("\n\n".join(part))
        elif fmt == "parquet":
            pq.write_table(pa.table({"text": part}), path, row_group_size=5)
        else:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerows([["text"]] + [[t] for t in part])
    src = [SourceConfig(path=str(tmp_path / f"*.{fmt}"), sample_by="paragraph")]

    def make():
        return pipeline(None, sources=src, repeat=True, shuffle=True)

    p = make()
    full = take(p, 30)
    p.close()
    in_order = pipeline(None, sources=src, shuffle_rows=0)  # rows in order: decodable
    assert sorted(decode_docs(take(in_order, None))) == sorted(texts)
    for cut in (4, 17):
        p = make()
        take(p, cut)
        state = json.loads(json.dumps(p.state_dict()))
        p.close()
        q = make()
        q.load_state_dict(state)
        _assert_same(take(q, 30 - cut), full[cut:])
        q.close()
