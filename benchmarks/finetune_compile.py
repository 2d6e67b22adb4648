"""Compile time of a fine-tuning run: without the persistent compilation cache, and with it
cold and warm (issue 21 item 1).

Runs the same ``jaxlm finetune`` three times, each in its own process and run directory, on
one CPU device: ``compile.cache=false`` (what every run paid before the cache was on by
default), then with an empty ``compile.cache_dir`` (the first run on a machine), then again
with that directory filled (a second run or a resume). For each it records the wall time,
the latency from launch to the end of the first train step (``metrics.jsonl``'s step 1),
and how many train-step shapes were compiled; the warm run's saving is the compile time the
cache removes. Writes the "Fine-tuning compile time" section of BENCHMARKS.md.

    python benchmarks/finetune_compile.py [--backbone DIR] [--epochs 1] [--out runs/bench_compile]
        [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from report import BENCHMARKS_MD, replace_section
from report import run_cli as jaxlm  # benchmarks/report.py

from jaxlm.runtime.hardware import describe_cpu

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Fine-tuning compile time"
PRESET = "configs/finetune/demo.yaml"


def first_step_latency(run_dir: Path, launched: float) -> float:
    """Seconds from launch to the end of the first train step (its metrics line)."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("step") == 1 and "train/loss" in row:
            return row["time"] - launched
    raise SystemExit(f"{run_dir}/metrics.jsonl has no step 1")


def one(name: str, out: Path, cache: list[str], common: list[str]) -> dict:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    launched = time.time()
    result, log, wall = jaxlm("finetune", PRESET, *common, *cache, f"finetune.run_dir={run_dir}",
                              "mesh.data=1")
    row = {"name": name, "wall_s": wall, "first_step_s": first_step_latency(run_dir, launched),
           "compiles": log.count("compiling the train step"), "accuracy": result["accuracy"]}
    print(row, flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="runs/default",
                   help="finetune.backbone (default: %(default)s; run `jaxlm train` first)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", default="runs/bench_compile")
    p.add_argument("overrides", nargs="*", help="more finetune key=value settings")
    args = p.parse_args()
    out = ROOT / args.out
    cache_dir = out / "xla_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    common = [f"finetune.backbone={args.backbone}", f"finetune.epochs={args.epochs}",
              *args.overrides]
    rows = [one("no cache", out, ["compile.cache=false"], common),
            one("cache, cold", out, [f"compile.cache_dir={cache_dir}"], common),
            one("cache, warm", out, [f"compile.cache_dir={cache_dir}"], common)]
    write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    command = "python benchmarks/finetune_compile.py " + " ".join(sys.argv[1:])
    none, warm = rows[0], rows[2]
    lines = [HEADING, "", f"Command: `{command.strip()}`  ",
             f"Machine: {describe_cpu()}, {os.cpu_count()} CPU cores, one JAX CPU device. "
             f"`jaxlm finetune {PRESET} finetune.backbone={args.backbone} "
             f"finetune.epochs={args.epochs}` three times, each its own process and run "
             "directory: without the persistent compilation cache, with an empty cache "
             "directory, and with that directory filled by the run before.", "",
             "| run | train-step shapes (compiled, or loaded from the cache) | launch to first "
             "step done | wall |",
             "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['compiles']} | {r['first_step_s']:.1f} s | "
                     f"{r['wall_s']:.1f} s |")
    lines += ["", f"The warm cache saves {none['wall_s'] - warm['wall_s']:.1f} s of "
              f"{none['wall_s']:.1f} s end to end and brings the first step from "
              f"{none['first_step_s']:.1f} s to {warm['first_step_s']:.1f} s after launch."]
    replace_section(BENCHMARKS_MD, HEADING, "\n".join(lines) + "\n")
    print(f"wrote {BENCHMARKS_MD}", flush=True)


if __name__ == "__main__":
    main()
