"""Long documents: read and tokenized in pieces, in bounded memory, with a small positional
state, exact resume inside a document, rows spread over batches, and non-text refused."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datahelpers import long_text, make_texts, pipeline, take, tokenizer, write_jsonl

from jaxlm.config import SourceConfig
from jaxlm.data import producer
from jaxlm.data.pipeline import DataError
from jaxlm.data.textfiles import PIECE_CHARS, cut_pieces, find_cut, text_examples


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("long")
    (d / "long.txt").write_text(long_text(5 * PIECE_CHARS, seed=1))
    (d / "books").mkdir()
    for k in range(2):
        (d / "books" / f"book{k}.txt").write_text(long_text(PIECE_CHARS * 3 // 2, seed=10 + k))
    texts = make_texts(30, seed=3, max_words=40)
    write_jsonl(d / "short.jsonl", texts)
    write_jsonl(d / "mixed.jsonl", [texts[0], long_text(4 * PIECE_CHARS, seed=2), texts[1],
                                    long_text(2 * PIECE_CHARS, seed=4)])
    return d


# ------------------------------------------------------------------------------- pieces


def test_pieces_are_cut_at_lone_spaces_and_rejoin_to_the_text():
    text = long_text(10 * PIECE_CHARS, seed=5)
    for chunk in (PIECE_CHARS, 1000, 4 * PIECE_CHARS):  # however the file is read
        pieces = list(cut_pieces([(text[i:i + chunk], False) for i in range(0, len(text), chunk)]
                                 + [("", True)]))
        assert "".join(p for p, _ in pieces) == text
        assert [more for _, more in pieces] == [True] * (len(pieces) - 1) + [False]
        assert all(PIECE_CHARS // 2 <= len(p) <= PIECE_CHARS for p, _ in pieces[:-1])
        assert all(p[-1] != " " and p[-2] != " " for p, _ in pieces[:-1])
        if chunk == PIECE_CHARS:
            first = pieces
        assert pieces == first
    assert find_cut("x" * 100, 0, 10) == 10  # no space at all: a hard cut at the limit
    assert find_cut("aaaa bbbb\ncccc dddd", 0, 16) == 9  # a newline is preferred


def test_piecewise_tokens_equal_whole_document_tokens(corpus):
    text = (corpus / "long.txt").read_text()
    pieces = [e["text"] for e in text_examples([str(corpus / "long.txt")], "document")]
    assert len(pieces) >= 5 and "".join(pieces) == text
    tok = tokenizer()
    whole = tok.encode(text, add_special_tokens=False).ids
    p = pipeline(str(corpus / "long.txt"), shuffle=False, seq_len=128, local_batch=8)
    batches = take(p)
    for key, want in (("inputs", [1, *whole]), ("targets", [*whole, 1])):
        got = np.concatenate([b[key][b["segment_ids"] > 0] for b in batches])
        assert np.array_equal(got, want), key
    assert p.stats["documents"] == 1


# ------------------------------------------------------------------------ memory and state


_CHILD = """
import json, sys, time
from jaxlm.config import DataConfig, SourceConfig
from jaxlm.data.pipeline import Pipeline
from jaxlm.data.tokenizer import load_tokenizer
def kb(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
tok = load_tokenizer("default")
import datasets  # noqa: F401  (imported before the baseline)
base, t0 = kb("VmRSS"), time.perf_counter()
p = Pipeline(DataConfig(seq_len=128), [SourceConfig(path=sys.argv[1])], tok, 8)
next(p)
first = time.perf_counter() - t0
for _ in range(300):
    next(p)
state = json.dumps(p.state_dict())
p.close()
print(json.dumps({"growth_mb": (kb("VmHWM") - base) / 1024, "first_s": first,
                  "state_bytes": len(state)}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_a_200mb_document_streams_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.txt"
    block = long_text(1 << 20, seed=6) + "\n"
    with open(path, "w") as f:
        for _ in range(200):
            f.write(block)
    env = dict(os.environ, HF_HUB_OFFLINE="1", USE_TORCH="0", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["growth_mb"] < 150, out  # the document alone is 200 MB
    assert out["first_s"] < 60, out  # ~1.5 s measured; loose for busy CI machines
    assert out["state_bytes"] < 4096, out


def test_state_is_positions_only_inside_a_long_document(corpus, monkeypatch):
    monkeypatch.setattr(producer, "ROUND_PIECES", 1)  # a round per piece
    with pipeline(str(corpus / "long.txt"), repeat=True, seq_len=128, local_batch=8) as p:
        take(p, 50)  # inside the document, past its first piece
        state = p.state_dict()
    text = json.dumps(state)
    assert len(text) < 4096
    assert state["anchor"]["round"]["docs"]["sources"][0]["in_doc"]
    assert "crown" not in text and "honour" not in text  # no words of the document


def test_an_old_text_carrying_state_is_refused_clearly(corpus):
    p = pipeline(str(corpus / "short.jsonl"))
    old = {**p.state_dict(), "version": 1}
    with pytest.raises(DataError, match="version 1 cannot be resumed.*positions instead"):
        p.load_state_dict(old)


# ------------------------------------------------------------------------------- resume


CASES = {  # sources (path: weight), pipeline settings, batches, cuts
    "txt-pack": ({"long.txt": 1}, {}, 120, (5, 41, 77, 110)),
    "jsonl-mlm": ({"mixed.jsonl": 1}, {"mode": "mlm"}, 120, (5, 41, 77, 110)),
    "mix-pad-truncate": ({"books/*.txt": 1, "short.jsonl": 9}, {"mode": "pad", "truncate": True},
                         40, (9, 21, 35)),
    "single-file-epochs": ({"short.jsonl": 1}, {}, 30, (3, 11)),
}


@pytest.mark.parametrize("case", CASES)
def test_resume_at_cuts_inside_long_documents(corpus, monkeypatch, case):
    monkeypatch.setattr(producer, "ROUND_PIECES", 1)  # rounds end inside documents too
    paths, kw, n, cuts = CASES[case]
    sources = [SourceConfig(path=str(corpus / p), weight=w) for p, w in paths.items()]

    def make():
        return pipeline(None, sources=sources, repeat=True, shuffle=True, seq_len=64,
                        local_batch=8, shuffle_rows=24, **kw)

    with make() as p:
        full = take(p, n)
    inside = 0
    for cut in cuts:
        with make() as p:
            take(p, cut)
            state = json.loads(json.dumps(p.state_dict()))
        anchor = state["anchor"]  # mid-document, or dropping the rest of a truncated one
        inside += anchor["drop"] or any(s["in_doc"] for s in anchor["round"]["docs"]["sources"])
        with make() as q:
            q.load_state_dict(state)
            tail = take(q, n - cut)
        for i, (x, y) in enumerate(zip(full[cut:], tail, strict=True)):
            for k in x:
                assert np.array_equal(x[k], y[k]), f"cut {cut}: batch {cut + i}, {k} differs"
    if case != "single-file-epochs":  # that one resumes across epochs of a one-file source
        assert inside >= 1, "cuts should fall inside a document"


# -------------------------------------------------------------------------- row shuffle


def _rows(batches: list[dict]) -> list[bytes]:
    return [b["inputs"][r].tobytes() + b["targets"][r].tobytes()
            for b in batches for r in range(len(b["inputs"]))]


def test_row_shuffle_spreads_one_document_over_batches(corpus):
    W, B, windows = 64, 8, 3
    kw = dict(repeat=True, shuffle=True, seq_len=64, local_batch=B)
    ordered = _rows(take(pipeline(str(corpus / "long.txt"), shuffle_rows=0, **kw), W // B * 3))
    shuffled = _rows(take(pipeline(str(corpus / "long.txt"), shuffle_rows=W, **kw),
                          W // B * windows))
    index = {row: i for i, row in enumerate(ordered)}
    assert len(index) == len(ordered)  # rows of one text are all distinct
    for w in range(windows):  # each window is a permutation of the same rows
        assert sorted(index[r] for r in shuffled[w * W:(w + 1) * W]) == list(
            range(w * W, (w + 1) * W))
    spread = [np.ptp([index[r] for r in shuffled[k:k + B]]) for k in range(0, len(shuffled), B)]
    assert np.mean(spread) > W / 2  # in order, a batch spans B - 1 = 7 consecutive rows
    again = _rows(take(pipeline(str(corpus / "long.txt"), shuffle_rows=W, **kw), W // B))
    other = _rows(take(pipeline(str(corpus / "long.txt"), shuffle_rows=W, seed=1, **kw), W // B))
    assert again == shuffled[:W] and other != again


# ----------------------------------------------------------------------------- not text


def test_binary_input_is_refused_in_one_line_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "random.txt").write_bytes(rng.bytes(1 << 20))
    (tmp_path / "utf16.txt").write_bytes(long_text(5000).encode("utf-16"))
    with gzip.open(tmp_path / "packed.txt.gz", "wb") as f:
        f.write(rng.bytes(100_000))
    for name in ("random.txt", "utf16.txt", "packed.txt.gz"):
        with pytest.raises(DataError, match=f"{name}' does not look like text") as e:
            pipeline(str(tmp_path / name))
        assert "\n" not in str(e.value)
    latin1 = tmp_path / "latin1.txt"  # text in another encoding: repaired and counted
    latin1.write_bytes(("Café au lait, naïve façade. " * 200).encode("latin-1"))
    with pytest.warns(UserWarning, match="not UTF-8"):
        p = pipeline(str(latin1), shuffle=False)
        take(p)
    assert p.stats["utf8_replaced"] == 1
    d = tmp_path / "dir"  # a binary file met mid-stream fails when it is reached
    d.mkdir()
    (d / "a.txt").write_text(long_text(20_000))
    (d / "b.txt").write_bytes(rng.bytes(50_000))
    p = pipeline(str(d), shuffle=False, repeat=False)
    with pytest.raises(DataError, match="b.txt' does not look like text"):
        take(p)


def test_the_removed_document_buffer_setting_says_what_replaced_it():
    from pydantic import ValidationError

    from jaxlm.config import DataConfig

    with pytest.raises(ValidationError, match="data.shuffle_rows"):
        DataConfig(shuffle_buffer=1024)
    assert DataConfig().shuffle_rows == 1024
