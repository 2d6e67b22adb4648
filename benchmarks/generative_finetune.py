"""Generative fine-tuning on the docstring-summary demo: pretrained backbone vs from scratch,
packed vs one example per row.

Pretrains the default run (``jaxlm train``, the embedded corpus; reused if ``--out``/pretrain
exists), then runs ``jaxlm finetune configs/finetune/summarize.yaml`` from it and with
``finetune.from_scratch=true`` (same architecture, tokenizer and schedule) for each seed, and
once with ``finetune.packing=false``; writes the test ROUGE-L / F1 / chrF / loss (mean and
spread over the seeds), the train steps, wall time and padding waste to the "Generative
fine-tuning" section of BENCHMARKS.md. One CPU device.

    python benchmarks/generative_finetune.py [--seeds 0 1 2] [--out runs/bench_gen]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

from report import BENCHMARKS_MD, replace_section
from report import run_cli as jaxlm  # benchmarks/report.py

from jaxlm.runtime.hardware import describe_cpu

ROOT = Path(__file__).resolve().parents[1]
PRESET = "configs/finetune/summarize.yaml"



def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/bench_gen")
    args = p.parse_args()
    out = ROOT / args.out
    backbone = out / "pretrain"
    if not (backbone / "checkpoints").is_dir():
        jaxlm("train", f"train.run_dir={backbone}", "train.sample_tokens=0")
    results: dict[str, list[dict]] = {"pretrained": [], "from scratch": []}
    logs: dict[str, str] = {}
    for seed in args.seeds:
        for name, extra in (("pretrained", []), ("from scratch", ["finetune.from_scratch=true"])):
            run = out / f"{name.replace(' ', '_')}_{seed}"
            r, log, wall = jaxlm("finetune", PRESET, f"finetune.backbone={backbone}",
                                 f"finetune.run_dir={run}", f"finetune.seed={seed}",
                                 "mesh.data=1", *extra)
            r["wall_s"] = wall
            results[name].append(r)
            logs[name] = log
            print(f"{name} seed {seed}: test rouge_l {r['rouge_l']:.4f} f1 {r['f1']:.4f} "
                  f"loss {r['loss']:.4f} ({wall:.0f} s)", flush=True)
    padded, padded_log, padded_wall = jaxlm(
        "finetune", PRESET, f"finetune.backbone={backbone}", f"finetune.run_dir={out}/padded",
        "finetune.packing=false", "mesh.data=1")

    def layout(log: str) -> str:
        m = re.search(r"into (\d+) rows of (\d+) tokens \(([\d.]+)% padding\); .*?(\d+) epochs of "
                      r"(\d+) steps", log)
        steps = int(m.group(4)) * int(m.group(5))
        return f"{m.group(1)} rows, {m.group(3)}% padding, {steps} steps"

    rows = []
    for name, rs in results.items():
        rows.append(f"| {name} | {summary([r['rouge_l'] for r in rs])} | "
                    f"{summary([r['f1'] for r in rs])} | {summary([r['chrf'] for r in rs])} | "
                    f"{summary([r['loss'] for r in rs])} | "
                    f"{statistics.mean(r['wall_s'] for r in rs):.0f} s |")
    packed_wall = statistics.mean(r["wall_s"] for r in results["pretrained"])
    command = "python benchmarks/generative_finetune.py " + " ".join(sys.argv[1:])
    body = f"""## Generative fine-tuning

`{command.strip()}` — `jaxlm finetune {PRESET}` (the docstring-summary demo: 830 / 111 / 106
docstring bodies -> their summary line; greedy summaries scored on the test split) from the
default pretraining run (300 steps on the embedded Shakespeare corpus, 2.6M parameters) and from
scratch (same architecture, tokenizer and schedule), seeds {args.seeds}, one CPU device
({describe_cpu()}); mean ± standard deviation over the seeds; wall time per run includes
compilation.

| backbone | test ROUGE-L | test F1 | test chrF | test loss | wall |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Packing (pretrained, seed 0): packed {layout(logs['pretrained'])}, {packed_wall:.0f} s per run;
one example per row {layout(padded_log)}, {padded_wall:.0f} s (test ROUGE-L {padded['rouge_l']:.4f},
loss {padded['loss']:.4f}).
"""
    replace_section(BENCHMARKS_MD, "## Generative fine-tuning", body)
    print(body)


if __name__ == "__main__":
    main()
