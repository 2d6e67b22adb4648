"""Shared helpers for the data pipeline tests (no tests here)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np

from jaxlm.config import DataConfig, SourceConfig
from jaxlm.data.pipeline import Pipeline
from jaxlm.data.tokenizer import load_tokenizer

WORDS = ("the king queen love night sword crown honour death fair sweet lord lady time "
         "heart blood gentle noble speak hath thou thee thy doth mine good").split()
_TOK = None


def tokenizer():
    """The embedded tokenizer, loaded once."""
    global _TOK
    if _TOK is None:
        _TOK = load_tokenizer("default")
    return _TOK


def make_texts(n: int, seed: int = 0, prefix: str = "doc", max_words: int = 120) -> list[str]:
    """``n`` distinct documents of 1..max_words words (some longer than a short row)."""
    rng = random.Random(seed)
    return [f"{prefix} {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(1, max_words)))
            for i in range(n)]


def long_text(chars: int, seed: int = 0) -> str:
    """Prose-like text of ``chars`` characters: lines of 3-20 words, some blank lines."""
    rng = random.Random(seed)
    lines, n = [], 0
    while n < chars:
        line = " ".join(rng.choices(WORDS, k=rng.randint(3, 20)))
        lines.append(line + ("\n" if rng.random() < 0.12 else ""))
        n += len(line) + 1
    return "\n".join(lines)[:chars]


def write_jsonl(path: Path, texts: list[str], column: str = "text") -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({column: t, "n": len(t)}) + "\n")
    return path


def write_shards(directory: Path, texts: list[str], n_files: int, prefix: str = "part"
                 ) -> list[str]:
    """Spread ``texts`` over ``n_files`` jsonl files (round robin)."""
    directory.mkdir(parents=True, exist_ok=True)
    return [str(write_jsonl(directory / f"{prefix}-{k:03d}.jsonl", texts[k::n_files]))
            for k in range(n_files)]


def data_cfg(**kw) -> DataConfig:
    kw.setdefault("seq_len", 32)
    kw.setdefault("shuffle_rows", 16)
    kw.setdefault("prefetch", 2)
    return DataConfig(**kw)


def pipeline(paths, *, local_batch: int = 4, repeat: bool = False, sources=None,
             process_index: int = 0, process_count: int = 1, **kw) -> Pipeline:
    data = data_cfg(**kw)
    srcs = sources if sources is not None else [SourceConfig(path=paths)]
    return Pipeline(data, srcs, tokenizer(), local_batch, process_index, process_count, repeat)


def take(p, n: int | None = None) -> list[dict[str, np.ndarray]]:
    out: list[dict[str, np.ndarray]] = []
    if n == 0:
        return out
    for b in p:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def decode_docs(batches: list[dict[str, np.ndarray]], mlm: bool = False) -> list[str]:
    """The documents of a packed stream, in order, rebuilt from the emitted items.

    Causal rows: the targets of all real positions, in row-major order, are ``d + [EOS]`` per
    document. MLM rows: the original tokens are ``[EOS] + d + [EOS]`` per document.
    """
    eos = 1
    items = np.concatenate([b["targets"][b["segment_ids"] > 0] for b in batches])
    docs, cur = [], []
    if mlm:
        inside = False
        for t in items.tolist():
            if t == eos:
                if inside:
                    docs.append(cur)
                    cur = []
                inside = not inside
            else:
                cur.append(t)
    else:
        for t in items.tolist():
            if t == eos:
                docs.append(cur)
                cur = []
            else:
                cur.append(t)
        assert not cur, "stream ended inside a document"
    tok = tokenizer()
    return [tok.decode(d) for d in docs]
