"""Shared by the benchmark scripts: write a script's section of BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONE_DEVICE = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def replace_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) the markdown section whose heading line is ``heading`` (the whole
    line: "## Fine-tuning" is not "## Fine-tuning against PyTorch")."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    found = re.search(rf"^{re.escape(heading.rstrip())}[ \t]*$", text, flags=re.MULTILINE)
    start = found.start() if found else -1
    if start < 0:
        text = text.rstrip() + "\n\n" + body
    else:
        end = text.find("\n## ", start + len(heading))
        rest = "\n" + text[end + 1 :] if end >= 0 else ""  # a blank line before the next one
        text = text[:start] + body.rstrip("\n") + "\n" + rest
    path.write_text(text)


def run_json(argv: list[str], what: str) -> tuple[dict, str, float]:
    """Run ``argv`` from the repository root on one CPU device: (the JSON object on the last
    line of its stdout, its output, wall seconds); a failure stops the benchmark with the
    command's last output, naming it ``what``."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=ONE_DEVICE, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr + proc.stdout, \
        time.perf_counter() - t0


def run_cli(*args: str) -> tuple[dict, str, float]:
    """Run the jaxlm CLI on one CPU device: (its --json result, its output, wall seconds);
    a failure stops the benchmark with the command's last output."""
    return run_json([sys.executable, "-m", "jaxlm.cli", *args, "logging.progress=false",
                     "--json"], f"jaxlm {' '.join(args)}")
