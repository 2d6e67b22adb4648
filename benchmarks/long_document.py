"""Long documents: memory, speed and state size of the data pipeline on one huge document,
and what the row shuffle does to the held-out loss of a model trained on one text file.

1. A single-document text file of ``--mb`` MB (200 by default) is generated in a temporary
   directory by repeating the embedded corpus' train split. A fresh process (so its peak RSS
   is its own) streams it through the train pipeline of ``configs/pretrain/tiny.yaml`` (batch
   8x128, row shuffle on) for one pass or ``--seconds``, and reports: peak RSS and its growth
   over the process after imports, time to the first batch, tokens/s (non-padding positions),
   the size and cost of ``state_dict()`` half way through, and the time from
   ``load_state_dict()`` of that state to the next batch in a new pipeline (resuming in the
   middle of the document).
   The same is measured on a 1.1 MB excerpt (the single-file Shakespeare case of the bug
   report), and, with ``--old-src DIR`` (``git archive <rev> jaxlm | tar -x -C DIR``), for
   the code before this change on that excerpt (the 200 MB file is out of its reach).
2. The tiny model is trained twice for ``--steps`` steps on the embedded train split written
   as one .txt file (one document), with the row shuffle (``data.shuffle_rows=1024``) and
   without (``0``), and evaluated on the held-out split (``default``/``valid``).

The "Long documents" section of BENCHMARKS.md is rewritten with the figures and the command.

    python benchmarks/long_document.py [--mb 200] [--steps 600] [--old-src /tmp/jaxlm-old]
"""

from __future__ import annotations

import os

os.environ.setdefault("USE_TORCH", "0")  # `datasets` would import torch (~6 s) if installed
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from report import replace_section  # benchmarks/report.py  # noqa: E402

from jaxlm.runtime.hardware import describe_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Long documents"
CORPUS = ROOT / "jaxlm" / "assets" / "corpus"
BATCH, SEQ = 8, 128  # configs/pretrain/tiny.yaml


def corpus_text(split: str = "train") -> str:
    with gzip.open(CORPUS / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        return "\n\n".join(json.loads(line)["text"] for line in f)


def write_document(path: Path, chars: int) -> None:
    """One document of ``chars`` characters: the train split, repeated and cut."""
    text = corpus_text() + "\n\n"
    with open(path, "w", encoding="utf-8") as f:
        while chars > 0:
            f.write(text[:chars])
            chars -= len(text)


def _kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def child(path: str, seconds: float) -> dict[str, float]:
    """Runs in a fresh process: stream ``path`` through the train pipeline (see module doc)."""
    import numpy as np

    from jaxlm.config import DataConfig, SourceConfig
    from jaxlm.data.pipeline import Pipeline
    from jaxlm.data.tokenizer import load_tokenizer

    tok = load_tokenizer("default")
    with open(path, encoding="utf-8") as f:
        sample = f.read(1 << 20)
    per_char = len(tok.encode(sample, add_special_tokens=False).ids) / len(sample)
    one_pass = per_char * os.path.getsize(path)  # tokens in the document, about
    import datasets  # noqa: F401  (part of the baseline, as in a training process)

    base = _kb("VmRSS")

    def make() -> Pipeline:
        return Pipeline(DataConfig(seq_len=SEQ), [SourceConfig(path=path)], tok, BATCH)

    t0 = time.perf_counter()
    pipe = make()
    next(pipe)
    first = time.perf_counter() - t0
    tokens, t0, state, state_s = 0, time.perf_counter(), "", 0.0
    while tokens < one_pass and time.perf_counter() - t0 < seconds:
        tokens += int(np.count_nonzero(next(pipe)["segment_ids"]))
        if not state and tokens >= one_pass / 2:  # half way through the document
            t1 = time.perf_counter()
            state = json.dumps(pipe.state_dict())
            state_s = time.perf_counter() - t1
    streamed = time.perf_counter() - t0
    pipe.close()
    t0 = time.perf_counter()
    again = make()
    again.load_state_dict(json.loads(state or json.dumps(pipe.state_dict())))
    next(again)
    resume_s = time.perf_counter() - t0
    again.close()
    return {"mb": os.path.getsize(path) / 1e6, "first_s": first,
            "tok_s": tokens / (first + streamed), "tok_s_after_first": tokens / streamed,
            "tokens": tokens, "pass": tokens / one_pass, "state_bytes": len(state),
            "state_s": state_s, "resume_s": resume_s, "peak_mb": _kb("VmHWM") / 1024,
            "growth_mb": (_kb("VmHWM") - base) / 1024}


def measure(path: Path, seconds: float, src: str | None = None) -> dict[str, float]:
    """:func:`child` in a new process, on this checkout or on the jaxlm under ``src``."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--child", str(path), "--seconds", str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def heldout(train_file: Path, shuffle_rows: int, steps: int, run_dir: Path) -> dict[str, float]:
    """Train the tiny model on ``train_file`` (one document); held-out loss on default:valid."""
    from jaxlm.config import load_config
    from jaxlm.train.pretrain import train

    cfg = load_config(ROOT / "configs/pretrain/tiny.yaml", [
        f"data.train.0.path={train_file}", f"data.shuffle_rows={shuffle_rows}",
        f"train.steps={steps}", f"train.run_dir={run_dir}", "train.eval_every=1000000",
        "train.eval_batches=50", "train.sample_tokens=0", "checkpoint.every=1000000",
        "logging.progress=false", "logging.tensorboard=false", "mesh.data=1"])
    t0 = time.perf_counter()
    out = train(cfg)
    return {"loss": out["eval_loss"], "ppl": out["perplexity"], "train_loss": out["final_loss"],
            "s": time.perf_counter() - t0}


def _row(name: str, r: dict[str, float]) -> str:
    return (f"| {name} | {r['mb']:,.1f} MB | {r['peak_mb']:,.0f} MB (+{r['growth_mb']:,.0f}) | "
            f"{r['first_s']:.2f} s | {r['tok_s']:,.0f} ({r['tok_s_after_first']:,.0f}; "
            f"{r['tokens'] / 1e6:.1f}M tokens, {min(r['pass'], 1):.0%} of a pass) | "
            f"{r['state_bytes']:,} B in "
            f"{r['state_s'] * 1e3:,.1f} ms | {r['resume_s']:.2f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=float, default=200, help="size of the generated document")
    p.add_argument("--seconds", type=float, default=600, help="streaming time cap per file")
    p.add_argument("--steps", type=int, default=600, help="train steps per held-out run")
    p.add_argument("--old-src", help="a directory holding the jaxlm package before the change")
    p.add_argument("--old-label", default="the code before", help="what --old-src holds")
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.seconds)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="jaxlm-long-doc-"))
    try:
        small, big, one = tmp / "shakespeare-1.1mb.txt", tmp / "huge.txt", tmp / "corpus.txt"
        small.write_text(corpus_text()[:1_100_000], encoding="utf-8")
        write_document(big, int(args.mb * 1e6))
        one.write_text(corpus_text(), encoding="utf-8")
        rows = []
        if args.old_src:
            rows.append((f"before ({args.old_label})", small, args.old_src))
        rows += [("after", small, None), ("after", big, None)]
        pipe = []
        for name, path, src in rows:
            r = measure(path, args.seconds, src)
            pipe.append(_row(name, r))
            print(pipe[-1], flush=True)
        runs = {}
        for rows_ in (1024, 0):
            runs[rows_] = r = heldout(one, rows_, args.steps, tmp / f"run-{rows_}")
            print(f"shuffle_rows={rows_}: held-out loss {r['loss']:.4f} (ppl {r['ppl']:.1f}), "
                  f"final train loss {r['train_loss']:.4f}, {r['s']:.0f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cmd = " ".join(["python", f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    lines = [
        SECTION, "", f"Command: `{cmd}`  ",
        f"Machine: {describe_cpu()}, {os.cpu_count()} CPU cores, shared with another developer's "
        "work while measured (absolute times are loose; the ratios are the point).", "",
        f"**Pipeline on one document** (train stream of `configs/pretrain/tiny.yaml`: batch "
        f"{BATCH}x{SEQ}, default tokenizer, row shuffle on). Each file is streamed for one pass "
        "(or the time cap) in a fresh process. Peak RSS is the process's (imports included), "
        "growth is over the process right after imports. `state_dict()` is taken half way "
        "through the document; resume is `load_state_dict()` of that state in a new pipeline, "
        "to its first batch. Tokens/s (non-padding "
        "positions) over the whole pass, first batch and the half-way `state_dict()` included, as "
        "in training (in brackets: after the first batch).", "",
        "| code | document | peak RSS (growth) | first batch | tokens/s | `state_dict()` | "
        "resume |", "|---|---:|---:|---:|---:|---:|---:|", *pipe, "",
        f"**Held-out loss, single-file corpus.** The tiny model trained for {args.steps} steps "
        f"of {BATCH}x{SEQ} tokens on the embedded train split written as one .txt file (one "
        "document, 3.4 MB), evaluated on the held-out split (`default`/`valid`, 50 batches); "
        "same seeds, only `data.shuffle_rows` differs.", "",
        "| row shuffle | held-out loss | perplexity | final train loss |", "|---|---:|---:|---:|",
        *[f"| `shuffle_rows={k}` | {r['loss']:.4f} | {r['ppl']:.1f} | {r['train_loss']:.4f} |"
          for k, r in runs.items()],
        "", f"Without the row shuffle a batch is {BATCH} consecutive rows of one passage: the "
        f"train loss ends lower and the held-out loss higher "
        f"({runs[0]['loss'] - runs[1024]['loss']:+.3f} nats against the shuffled run).",
    ]
    print("\n".join(lines))
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", SECTION, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
