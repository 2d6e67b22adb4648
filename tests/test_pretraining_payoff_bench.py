"""benchmarks/pretraining_payoff.py reproduces issue 22's rows with one command: smoke-tested
with ``--quick`` (tiny encoder and decoder pretrained for a few steps on the embedded corpus,
one seed, one epoch) into a scratch markdown file, never the real BENCHMARKS.md. The runs are
marked slow (the encoder part alone, and every part: 13 runs, minutes); the fast lane checks
the refusal that needs no run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = "benchmarks/pretraining_payoff.py"
HEADING = "## Pretraining that pays off: "
KEPT = "## Pretraining that pays off: some earlier part\n\nkept\n"


def rows(text: str, heading: str) -> dict[str, list[str]]:
    """The table rows of section ``heading``: first cell -> the other cells."""
    body = text[text.index(heading) + len(heading):].split("\n## ")[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines()
             if line.startswith("| ") and not line.startswith("| backbone")]
    return {c[0]: c[1:] for c in cells}


def mean(cell: str) -> float:
    """``"58.7 ± 2.9"`` -> 58.7"""
    return float(re.match(r"-?[\d.]+", cell).group())


def quick(out: Path, *parts: str) -> str:
    """Run the benchmark with ``--quick`` into ``out``: its stdout."""
    md = out / "BENCHMARKS.md"
    if not md.exists():
        md.write_text(f"# Benchmarks\n\n{KEPT}")
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(out),
                           *(["--parts", *parts] if parts else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def check_classification(table: dict[str, list[str]]) -> None:
    tfidf = next(v for k, v in table.items() if k.startswith("TF-IDF"))
    assert 30 < mean(tfidf[0]) <= 100  # the reference is a real classifier on the demo
    for name, cells in table.items():
        assert 0 <= mean(cells[0]) <= 100 and 0 <= mean(cells[1]) <= 100, name


@pytest.mark.slow  # ~1.5 min on a 2-core AVX2 CPU: the fast lane is already ~12 min there
def test_quick_encoder_part_writes_its_section_and_a_rerun_reuses_it(tmp_path: Path) -> None:
    quick(tmp_path, "encoder")
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert KEPT in text  # a section this run did not measure is left alone
    enc = rows(text, HEADING + "encoder")
    assert set(enc) >= {"encoder, pretrained", "encoder, from scratch"}
    check_classification(enc)
    again = quick(tmp_path, "encoder")  # every run measured is reused: nothing trains again
    assert "seed 0:" not in again and "pretrained " not in again
    assert rows((tmp_path / "BENCHMARKS.md").read_text(), HEADING + "encoder") == enc


@pytest.mark.slow
def test_quick_run_measures_every_part(tmp_path: Path) -> None:
    quick(tmp_path)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert KEPT in text
    dec = rows(text, HEADING + "decoder")
    assert {f"decoder, {i} ({p} pooling)" for i in ("pretrained", "from scratch")
            for p in ("last", "mean")} | {"decoder, pretrained (attention pooling)"} <= set(dec)
    dapt = rows(text, HEADING + "domain-adaptive pretraining")
    assert "published model, fine-tuned directly" in dapt
    for table in (rows(text, HEADING + "encoder"), dec, dapt):
        check_classification(table)
    gen = rows(text, HEADING + "generation")
    assert set(gen) == {"decoder, pretrained", "decoder, from scratch"}
    for cells in gen.values():
        assert 0 <= mean(cells[0]) <= 100 and mean(cells[2]) > 0  # ROUGE-L, test loss


def test_dapt_without_a_published_model_says_what_it_needs() -> None:
    proc = subprocess.run([sys.executable, SCRIPT, "--parts", "dapt"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--minilm DIR" in proc.stderr.strip().splitlines()[-1]
