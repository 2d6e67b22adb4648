"""benchmarks/train_throughput.py runs each framework in a process of its own and writes one
section per CPU kind: smoke-tested with ``--quick`` on jaxlm and PyTorch eager, into a
scratch markdown file (never the real BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxlm.runtime.hardware import describe_cpu

ROOT = Path(__file__).parents[1]
OTHER_KIND = "## Training throughput: Some other CPU (avx2), jax 0.0"


def test_quick_run_writes_a_section_for_this_cpu_kind(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the benchmark compares against PyTorch (the bench "
                        "extra: pip install -e '.[bench]')")
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(f"# Benchmarks\n\n{OTHER_KIND}\n\nkept\n")
    proc = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--quick",
                           "--torch", "eager-f32", "--out-md", str(md)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = md.read_text()
    assert f"{OTHER_KIND}\n\nkept\n" in text  # another CPU kind's section is left alone
    heading = f"## Training throughput: {describe_cpu()}, jax {jax.__version__}"
    assert heading in text
    lines = text[text.index(heading):].splitlines()
    header = next(line for line in lines if line.startswith("| config |"))
    row = next(line for line in lines if line.startswith("| tiny |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "PyTorch eager f32 tok/s" in cols
    assert float(cells[cols.index("jaxlm tok/s")].replace(",", "")) > 0
    assert float(cells[cols.index("PyTorch eager f32 tok/s")].replace(",", "")) > 0
