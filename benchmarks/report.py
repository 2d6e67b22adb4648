"""Shared by the benchmark scripts: write a script's section of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) the markdown section that starts at ``heading``."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip() + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(heading))
        rest = "\n" + text[end + 1 :] if end >= 0 else ""  # a blank line before the next one
        text = text[:start] + body.rstrip("\n") + "\n" + rest
    path.write_text(text)
