"""Packing, pad mode and the masked-LM collator: layout invariants and token accounting."""

from __future__ import annotations

import numpy as np
import pytest
from datahelpers import decode_docs, make_texts, pipeline, take, tokenizer, write_shards

from jaxlm.data.mlm import MaskCollator
from jaxlm.data.packing import Doc, Packer, empty_batch, make_doc

L = 16


def _synthetic_docs(n: int, seed: int, max_len: int) -> list[Doc]:
    """Documents with globally unique token values, so every item can be traced."""
    rng = np.random.default_rng(seed)
    docs, nxt = [], 10
    for _ in range(n):
        k = int(rng.integers(0, max_len))
        docs.append(make_doc(list(range(nxt, nxt + k)), eos=1, mode="pack"))
        nxt += k
    return docs


def _pack_all(docs: list[Doc], mode: str, truncate: bool = False, batch: int = 3):
    packer = Packer(L, mode, truncate)  # type: ignore[arg-type]
    packer.add(docs)
    rows = []
    while True:
        b = empty_batch(batch, L, pad_id=0)
        r = 0
        while r < batch and (packer.fill_row(b, r) or packer.flush(b, r)):
            r += 1
        rows += [{k: v[i] for k, v in b.items()} for i in range(r)]
        if r < batch:
            return rows


def _pieces(row):
    seg = row["segment_ids"]
    n = int(np.count_nonzero(seg))
    assert (seg[n:] == 0).all() and (seg[:n] > 0).all(), "padding only at the end of a row"
    assert (row["weights"] == (seg > 0)).all()
    assert (row["inputs"][n:] == 0).all() and (row["targets"][n:] == 0).all()
    out, start = [], 0
    for s in range(1, int(seg.max(initial=0)) + 1):
        idx = np.flatnonzero(seg == s)
        assert idx[0] == start and (np.diff(idx) == 1).all(), "segments are contiguous, in order"
        assert (row["positions"][idx] == np.arange(len(idx))).all(), "positions restart per segment"
        out.append((row["inputs"][idx], row["targets"][idx]))
        start = idx[-1] + 1
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pack_mode_layout_and_exact_coverage(seed):
    docs = _synthetic_docs(300, seed, max_len=3 * L)
    rows = _pack_all(docs, "pack")
    pieces = [p for row in rows for p in _pieces(row)]
    # every pair of every document exactly once, in order
    assert np.array_equal(np.concatenate([p[0] for p in pieces]),
                          np.concatenate([d.inputs for d in docs]))
    assert np.array_equal(np.concatenate([p[1] for p in pieces]),
                          np.concatenate([d.targets for d in docs]))
    for d in docs:  # documents that fit a row are never split
        if len(d) <= L:
            assert any(len(p[0]) == len(d) and np.array_equal(p[0], d.inputs) for p in pieces)
    # a row is padded only if the next piece did not fit in it
    for row, nxt in zip(rows[:-1], rows[1:], strict=True):
        room = L - int(np.count_nonzero(row["segment_ids"]))
        if room:
            assert len(_pieces(nxt)[0][0]) > room


def test_pad_mode_split_and_truncate():
    docs = _synthetic_docs(100, 5, max_len=3 * L)
    rows = _pack_all(docs, "pad")
    assert all(int(r["segment_ids"].max()) == 1 for r in rows)
    assert np.array_equal(np.concatenate([_pieces(r)[0][1] for r in rows]),
                          np.concatenate([d.targets for d in docs]))
    rows = _pack_all(docs, "pad", truncate=True)
    assert len(rows) == len(docs)
    for r, d in zip(rows, docs, strict=True):
        assert np.array_equal(_pieces(r)[0][0], d.inputs[:L])


def test_no_token_lost_or_duplicated_over_a_whole_shuffled_stream(tmp_path):
    texts = make_texts(150, seed=7, max_words=80)
    write_shards(tmp_path, texts, 5)
    p = pipeline(str(tmp_path / "*.jsonl"), seq_len=24, local_batch=5, shuffle=True,
                 shuffle_rows=0)  # file order shuffled, rows in order: documents decodable
    batches = take(p)
    docs = decode_docs(batches)
    assert sorted(docs) == sorted(texts) and docs != texts  # all of them, once, shuffled
    tok = tokenizer()
    n_items = sum(len(tok.encode(t, add_special_tokens=False).ids) + 1 for t in texts)
    assert sum(int(b["weights"].sum()) for b in batches) == n_items == p.stats["tokens"]
    for b in batches:
        inside = b["segment_ids"][:, 1:] == b["segment_ids"][:, :-1]
        inside &= b["segment_ids"][:, 1:] > 0
        assert (b["inputs"][:, 1:][inside] == b["targets"][:, :-1][inside]).all()
        assert all(v.shape == (5, 24) for v in b.values())
        assert b["weights"].dtype == np.float32 and b["inputs"].dtype == np.int32


def test_pad_mode_pipeline(tmp_path):
    texts = make_texts(40, seed=8, max_words=40)
    write_shards(tmp_path, texts, 2)
    batches = take(pipeline(str(tmp_path / "*.jsonl"), mode="pad", shuffle=False, seq_len=20))
    assert sorted(decode_docs(batches)) == sorted(texts)
    assert all(int(b["segment_ids"].max()) <= 1 for b in batches)


def test_mlm_statistics_and_coverage(tmp_path):
    texts = make_texts(1000, seed=9, max_words=150)
    write_shards(tmp_path, texts, 4)
    p = pipeline(str(tmp_path / "*.jsonl"), mode="mlm", seq_len=64, local_batch=8, shuffle_rows=0)
    batches = take(p)
    assert sorted(decode_docs(batches, mlm=True)) == sorted(texts)  # targets = original tokens
    tgt = np.concatenate([b["targets"].ravel() for b in batches])
    inp = np.concatenate([b["inputs"].ravel() for b in batches])
    w = np.concatenate([b["weights"].ravel() for b in batches]) > 0
    seg = np.concatenate([b["segment_ids"].ravel() for b in batches])
    special = np.isin(tgt, [0, 1, 2]) | (seg == 0)
    assert not (w & special).any(), "special tokens and padding are never selected"
    assert (inp[~w] == tgt[~w]).all(), "unselected positions are unchanged"
    n = int((~special).sum())
    assert n > 50_000
    assert abs(w.sum() / n - 0.15) < 0.01
    masked = (inp[w] == 2).mean()
    same = (inp[w] == tgt[w]).mean()
    random_tok = 1 - masked - same
    assert abs(masked - 0.8) < 0.02 and abs(same - 0.1) < 0.015 and abs(random_tok - 0.1) < 0.015
    assert not np.isin(inp[w & (inp != tgt) & (inp != 2)], [0, 1, 2]).any()


def test_mask_collator_is_keyed_by_seed_process_and_row():
    def masked(first_row: int, process_index: int = 0, seed: int = 0) -> np.ndarray:
        c = MaskCollator(0.3, 2, vocab_size=100, special_ids=[0, 1, 2], seed=seed,
                         process_index=process_index)
        b = empty_batch(6, 32, 0)
        b["inputs"][:] = np.random.default_rng(0).integers(3, 100, size=(6, 32))
        b["segment_ids"][:] = 1
        return c(b, first_row)["inputs"]

    assert np.array_equal(masked(10), masked(10))
    assert not np.array_equal(masked(10), masked(16))
    assert not np.array_equal(masked(10), masked(10, process_index=1))
    assert not np.array_equal(masked(10), masked(10, seed=1))


def test_mask_collator_caps_each_row_at_max_predictions(monkeypatch):
    """Rows never select more than max_predictions positions (the masked-LM task gathers
    that many); past it, the selections with the largest draws are dropped."""
    import jaxlm.data.mlm as mlm

    assert mlm.max_predictions(128, 0.15) == 40 and mlm.max_predictions(512, 0.15) == 112
    assert mlm.max_predictions(16, 0.5) == 16  # never more than the row
    monkeypatch.setattr(mlm, "max_predictions", lambda length, p: 5)
    c = MaskCollator(0.5, 2, vocab_size=100, special_ids=[0, 1, 2], seed=0, process_index=0)
    b = empty_batch(6, 32, 0)
    b["inputs"][:] = np.random.default_rng(0).integers(3, 100, size=(6, 32))
    b["segment_ids"][:] = 1
    w = c(b, 0)["weights"]
    assert (w.sum(axis=1) == 5).all()  # ~16 selected per row at 0.5, capped at 5
