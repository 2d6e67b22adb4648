#!/usr/bin/env python3
"""Build jaxlm's embedded text-classification demo set from Debian's ``fortunes`` package.

What: reads the fortune-cookie files of a few topical categories (``computers``, ``politics``,
...) from the Debian package ``fortunes`` (BSD licence), turns every fortune into one line of
text, and writes a stratified train/validation/test split as JSON Lines
(``{"text": ..., "label": <category>}``) next to this script.

Why: jaxlm needs a small, labeled, redistributable task that ships inside the repository and
runs offline (fine-tuning / classification demos, smoke tests). The fortune categories are
topical, so the task is learnable, but the texts are short, witty and often oblique, so it is
not trivial either.

The output is deterministic: the same package version gives byte-identical files on every run
(ordering and splitting use SHA-256 of a fixed seed and the text, not ``random`` or ``hash``).
See PROVENANCE.md for the exact package version and the rebuild commands. Standard library
only; extracting a ``.deb`` needs ``dpkg-deb``.

Usage::

    python jaxlm/assets/demo/build_demo.py SOURCE [--out-dir DIR] [--check]

SOURCE is a ``fortunes_*.deb``, the directory it was extracted into with ``dpkg-deb -x``, or
the ``usr/share/games/fortunes`` directory itself.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

# The Debian package version the committed files were built from (see PROVENANCE.md).
EXPECTED_VERSION = "1:1.99.1-7.3"

# Topically distinct categories with enough entries; the label is the file name.
CATEGORIES: tuple[str, ...] = ("computers", "politics", "science", "startrek", "work")

SEED = "jaxlm-demo-v1"
MIN_CHARS = 20  # drop shorter entries (after normalisation)
MAX_CHARS = 400  # drop longer entries (long stories, ASCII diagrams, program listings)
MIN_LETTER_RATIO = 0.6  # drop entries that are mostly symbols/digits (code, ASCII art)
MAX_PER_CLASS = 500  # cap per class, to keep the classes reasonably balanced
VALID_FRACTION = 0.1
TEST_FRACTION = 0.1
SPLITS: tuple[str, ...] = ("train", "validation", "test")

FORTUNE_SUBDIR = Path("usr/share/games/fortunes")
CHANGELOG = Path("usr/share/doc/fortunes/changelog.Debian.gz")

Record = dict[str, str]


def _sha(*parts: str) -> str:
    """Deterministic sort key: SHA-256 of the seed and the given parts."""
    return hashlib.sha256("\x1f".join((SEED, *parts)).encode("utf-8")).hexdigest()


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 that was decoded as Latin-1 (possibly several times), e.g. ``donÃ¢ÂÂt``.

    A few entries in ``law``, ``pets`` and ``computers`` are double/triple encoded. Repeat
    "encode as Latin-1, decode as UTF-8" while that succeeds; genuine Latin-1 text never
    decodes as UTF-8, so it is left alone.
    """
    while any(ord(c) > 127 for c in text):
        try:
            fixed = text.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            break
        if fixed == text:
            break
        text = fixed
    return text


def render_overstrike(text: str) -> str:
    """Apply backspaces as a terminal would: ``_\\bX`` -> ``X``, ``__\\b\\bOK`` -> ``OK``.

    Other control characters (bell, form feed, ...) are dropped; tabs and newlines are kept
    for the whitespace normalisation that follows.
    """
    out: list[str] = []
    for ch in text:
        if ch == "\b":
            if out:
                out.pop()
        elif unicodedata.category(ch) == "Cc" and ch not in "\t\n":
            continue
        else:
            out.append(ch)
    return "".join(out)


def normalise(entry: str) -> str:
    """One fortune -> one line: fix encoding, apply overstrike, NFC, collapse whitespace.

    Attributions (``-- Author``) stay in the text; only the line breaks and indentation
    around them become single spaces.
    """
    text = render_overstrike(fix_mojibake(entry))
    text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def dedup_key(text: str) -> str:
    """Key for duplicate detection: case-folded letters and digits only."""
    return "".join(c for c in text.casefold() if c.isalnum())


def letter_ratio(text: str) -> float:
    """Fraction of non-space characters that are letters."""
    chars = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in chars) / max(1, len(chars))


def read_fortunes(path: Path) -> list[str]:
    """Split a strfile source file into entries (separated by lines that are just ``%``)."""
    raw = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
    entries: list[str] = []
    current: list[str] = []
    for line in raw.split("\n"):
        if line == "%":
            entries.append("\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current))
    return [e for e in entries if e.strip()]


def package_version(root: Path) -> str | None:
    """The Debian version from the extracted changelog.Debian.gz, if present."""
    changelog = root / CHANGELOG
    if not changelog.is_file():
        return None
    with gzip.open(changelog, "rt", encoding="utf-8") as f:
        match = re.match(r"\S+ \(([^)]+)\)", f.readline())
    return match.group(1) if match else None


def collect(fortune_dir: Path) -> tuple[dict[str, list[str]], Counter[str]]:
    """Read, normalise and filter the chosen categories; drop duplicates.

    A text that occurs in two or more categories (after ``dedup_key``) is ambiguous and is
    dropped everywhere; repeats inside one category are kept once.
    """
    stats: Counter[str] = Counter()
    per_cat: dict[str, dict[str, str]] = {}
    for cat in CATEGORIES:
        kept: dict[str, str] = {}
        for entry in read_fortunes(fortune_dir / cat):
            stats[f"{cat}:raw"] += 1
            text = normalise(entry)
            if not MIN_CHARS <= len(text) <= MAX_CHARS:
                stats[f"{cat}:length"] += 1
                continue
            if letter_ratio(text) < MIN_LETTER_RATIO:
                stats[f"{cat}:symbols"] += 1
                continue
            key = dedup_key(text)
            if key in kept:
                stats[f"{cat}:dup_within"] += 1
                continue
            kept[key] = text
        per_cat[cat] = kept
    owners = Counter(key for kept in per_cat.values() for key in kept)
    out: dict[str, list[str]] = {}
    for cat, kept in per_cat.items():
        texts = [text for key, text in kept.items() if owners[key] == 1]
        stats[f"{cat}:dup_across"] = len(kept) - len(texts)
        stats[f"{cat}:kept"] = len(texts)
        out[cat] = texts
    return out, stats


def split(per_cat: dict[str, list[str]]) -> dict[str, list[Record]]:
    """Cap each class, then split it 80/10/10 (stratified); order is seeded and stable."""
    splits: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for cat, texts in per_cat.items():
        ordered = sorted(texts, key=lambda t: _sha("order", cat, t))[:MAX_PER_CLASS]
        n_test = round(len(ordered) * TEST_FRACTION)
        n_valid = round(len(ordered) * VALID_FRACTION)
        parts = {
            "test": ordered[:n_test],
            "validation": ordered[n_test : n_test + n_valid],
            "train": ordered[n_test + n_valid :],
        }
        for name, part in parts.items():
            splits[name].extend({"text": t, "label": cat} for t in part)
    for name, records in splits.items():
        records.sort(key=lambda r: _sha("shuffle", name, r["label"], r["text"]))
    return splits


def render(records: list[Record]) -> bytes:
    """JSON Lines, UTF-8, ``\\n`` line ends, keys in the order text, label."""
    lines = [
        json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n"
        for r in records
    ]
    return "".join(lines).encode("utf-8")


def find_fortune_dir(source: Path, tmp: Path) -> tuple[Path, Path | None]:
    """Return (fortune directory, extracted package root or None) for a .deb or a directory."""
    if source.is_file():
        root = tmp / "pkg"
        subprocess.run(["dpkg-deb", "-x", str(source), str(root)], check=True)
        return root / FORTUNE_SUBDIR, root
    if (source / FORTUNE_SUBDIR).is_dir():
        return source / FORTUNE_SUBDIR, source
    if (source / CATEGORIES[0]).is_file():
        return source, None
    raise SystemExit(f"{source}: not a .deb, an extracted package or a fortunes directory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="fortunes .deb or its extracted directory")
    parser.add_argument(
        "--out-dir", type=Path, default=Path(__file__).resolve().parent, help="output folder"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; fail if the files on disk differ"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        fortune_dir, root = find_fortune_dir(args.source, Path(tmp))
        version = package_version(root) if root is not None else None
        if version != EXPECTED_VERSION:
            print(
                f"warning: package version {version or 'unknown'}, expected {EXPECTED_VERSION};"
                " the output may differ from the committed files",
                file=sys.stderr,
            )
        per_cat, stats = collect(fortune_dir)

    splits = split(per_cat)
    stale = []
    for name, records in splits.items():
        path = args.out_dir / f"{name}.jsonl"
        data = render(records)
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        counts = Counter(r["label"] for r in records)
        detail = ", ".join(f"{cat} {counts[cat]}" for cat in CATEGORIES)
        print(f"{path}: {len(records)} records, {len(data)} bytes ({detail})")
    for cat in CATEGORIES:
        fields = ("raw", "length", "symbols", "dup_within", "dup_across", "kept")
        print(f"{cat}: " + ", ".join(f"{k} {stats[f'{cat}:{k}']}" for k in fields))
    if stale:
        print("out of date: " + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
