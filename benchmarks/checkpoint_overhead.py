"""Training time lost to checkpointing: step time without saving, with async saves, with
synchronous saves (CPU, one device).

For each config, the real jitted train step of ``jaxlm.train.pretrain.setup`` runs ``--steps``
steps on a fixed device-resident batch three times: without saving, saving every ``--every``
steps asynchronously (the default, ``checkpoint.async_save=true``), and saving synchronously.
A save is what the loop does: ``pipe.state_dict()`` of the real data pipeline plus
``Checkpointer.save`` (train state, data state, config, tokenizer). Reported: ms per step
averaged over all steps (saves included), the time the training thread is blocked per save,
and the checkpoint size. The final wait for the last async save is reported separately: it is
paid once, at the end of a run.

Integrity: the time to write a step's manifest (``jaxlm.checkpoint.integrity``: every file's
size and SHA-256, hashed in a background thread once the step is final) and to verify it
before a restore, next to the whole restore (``Checkpointer.restore``, verification included),
each the median of ``--repeats`` runs on the last saved step. The "Checkpoint overhead"
section of BENCHMARKS.md is rewritten with the figures and the command.

    python benchmarks/checkpoint_overhead.py [--steps 30] [--every 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("USE_TORCH", "0")  # `datasets` would import torch if installed
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
from report import replace_section  # benchmarks/report.py

from jaxlm.checkpoint.checkpointer import Checkpointer  # noqa: E402
from jaxlm.checkpoint.integrity import verify, write_manifest  # noqa: E402
from jaxlm.config import load_config  # noqa: E402
from jaxlm.data.pipeline import build_pipeline, to_global  # noqa: E402
from jaxlm.models import param_count  # noqa: E402
from jaxlm.runtime.hardware import describe_cpu  # noqa: E402
from jaxlm.train.pretrain import setup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Checkpoint overhead"
CONFIGS = {
    "tiny": ("configs/pretrain/tiny.yaml", []),
    "small (batch 2x64)": ("configs/pretrain/small.yaml",
                           ["train.global_batch=2", "data.seq_len=64"]),
}


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def integrity(cfg: Any, run: Any, step_dir: Path, repeats: int) -> dict[str, float]:
    """ms to write ``step_dir``'s manifest, to verify it, and to restore the run from it
    (verification included), medians of ``repeats``."""
    assert verify(step_dir) is None
    out = {"manifest_ms": _median_ms(lambda: write_manifest(step_dir), repeats),
           "verify_ms": _median_ms(lambda: verify(step_dir), repeats)}

    def restore() -> None:
        ckpt = Checkpointer(cfg, run.tokenizer, log=lambda m: None)
        state, *_ = ckpt.restore(run.state, run.shardings)
        jax.block_until_ready(state)
        ckpt.close()

    restore()  # warm-up: compiles nothing, but opens Orbax's machinery once
    out["restore_ms"] = _median_ms(restore, repeats)
    return out


def measure(config: str, overrides: list[str], steps: int, every: int,
            repeats: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="jaxlm-ckpt-bench-"))
    try:
        base = [*overrides, "mesh.data=1", f"train.steps={10 * steps}", "checkpoint.keep=2",
                f"checkpoint.every={every}"]
        cfg = load_config(ROOT / config, [*base, f"train.run_dir={tmp / 'warmup'}"])
        run = setup(cfg)
        pipe = build_pipeline(cfg.data, "train", run.local_batch)
        batch = to_global(next(pipe), run.batch_sharding)
        state = run.state
        out: dict[str, float] = {"params": param_count(cfg.model)}

        def phase(name: str, ckpt: Checkpointer | None) -> None:
            nonlocal state
            blocked, in_data_state, saves = 0.0, 0.0, 0
            jax.block_until_ready(state)
            start = time.perf_counter()
            for step in range(1, steps + 1):
                state, metrics = run.train_step(state, batch)
                if ckpt is not None and ckpt.due(step, steps):
                    jax.block_until_ready(state)  # time the save, not the step it waits for
                    t0 = time.perf_counter()
                    data_state = pipe.state_dict()
                    in_data_state += time.perf_counter() - t0
                    ckpt.save(step, state, data_state)
                    blocked += time.perf_counter() - t0
                    saves += 1
            jax.block_until_ready((state, metrics))
            out[f"{name}_ms"] = (time.perf_counter() - start) / steps * 1e3
            if ckpt is not None:
                t0 = time.perf_counter()
                ckpt.close()
                out[f"{name}_final_wait_ms"] = (time.perf_counter() - t0) * 1e3
                out[f"{name}_blocked_ms"] = blocked / saves * 1e3
                out[f"{name}_data_state_ms"] = in_data_state / saves * 1e3

        warm = Checkpointer(cfg, run.tokenizer, log=lambda m: None)
        phase("warmup", warm)  # compiles the step and Orbax's host transfers
        for name, is_async in [("async", True), ("sync", False)]:
            c = load_config(ROOT / config, [*base, f"train.run_dir={tmp / name}",
                                            f"checkpoint.async_save={str(is_async).lower()}"])
            phase(f"none_before_{name}", None)  # the baseline, next to each measurement
            phase(name, Checkpointer(c, run.tokenizer, log=lambda m: None))
        out["none_ms"] = (out["none_before_async_ms"] + out["none_before_sync_ms"]) / 2
        sync_cfg = load_config(ROOT / config, [*base, f"train.run_dir={tmp / 'sync'}",
                                               "checkpoint.async_save=false"])
        step_dir = max((tmp / "sync" / "checkpoints").iterdir(), key=lambda p: int(p.name))
        out["mb"] = sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file()) / 2**20
        out["files"] = sum(1 for f in step_dir.rglob("*") if f.is_file())
        out.update(integrity(sync_cfg, run, step_dir, repeats))
        pipe.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="train steps per phase")
    p.add_argument("--every", type=int, default=5, help="save every N steps")
    p.add_argument("--repeats", type=int, default=5, help="runs of each integrity timing")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = p.parse_args()
    rows, integrity_rows = [], []
    for name in args.configs:
        r = measure(*CONFIGS[name], args.steps, args.every, args.repeats)
        print(f"{name}: {r}", flush=True)
        over = (r["async_ms"] / r["none_ms"] - 1) * 100
        sync_over = (r["sync_ms"] / r["none_ms"] - 1) * 100
        steps_per_save = args.steps / (args.steps // args.every)
        lost = {k: (r[f"{k}_ms"] - r["none_ms"]) * steps_per_save / 1e3  # seconds
                for k in ("async", "sync")}
        rows.append(
            f"| {name} | {r['params'] / 1e6:.1f}M | {r['mb']:.1f} MB | {r['none_ms']:.1f} | "
            f"{r['async_ms']:.1f} (+{over:.0f}%) | {r['async_blocked_ms']:.0f} "
            f"({r['async_data_state_ms']:.0f}) | {r['async_final_wait_ms']:.0f} | "
            f"{r['sync_ms']:.1f} (+{sync_over:.0f}%) | {r['sync_blocked_ms']:.0f} | "
            f"{lost['async']:.2f} s / {lost['sync']:.2f} s |")
        integrity_rows.append(
            f"| {name} | {r['mb']:.1f} MB, {r['files']:.0f} files | {r['manifest_ms']:.0f} | "
            f"{r['verify_ms']:.0f} ({r['mb'] / r['verify_ms'] * 1e3:.0f} MB/s) | "
            f"{r['restore_ms']:.0f} | {r['verify_ms'] / r['restore_ms']:.0%} |")
    cmd = " ".join(["python", f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    lines = [
        SECTION, "", f"Command: `{cmd}`  ",
        f"Machine: CPU only ({describe_cpu()}, {os.cpu_count()} "
        "cores, shared with other jobs while measured), one JAX CPU device, local disk. "
        f"{args.steps} steps per phase, a save every {args.every} steps (the data-pipeline "
        "state, train state, config and tokenizer, as the loop saves them). ms/step averages "
        "all steps, saves included; *blocked* is the time the training thread spends in one "
        "save (for async: `pipe.state_dict()`, shown in brackets, and the copy to host "
        "memory); *final async wait* is the wait for the last async save at the end of a run; "
        "*lost per save* is the extra step time of a phase divided by its number of saves.", "",
        "| config | params | checkpoint | ms/step, no saves | ms/step, async saves | blocked "
        "ms per async save (of which `pipe.state_dict()`) | final async wait ms | ms/step, "
        "sync saves | blocked ms per sync save | training time lost per save, async / sync |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
        "On 2 shared CPU cores the background write competes with the train step for the same "
        "cores, so async saving still costs some step time here; on an accelerator the step "
        "runs on the device while the host writes.", "",
        "Integrity manifests (`jaxlm.checkpoint.integrity`): once a step is final, process 0 "
        "hashes its files (SHA-256) in a background thread and writes `jaxlm_manifest.json`; "
        "before a step is restored the files are hashed again and compared. Medians of "
        f"{args.repeats} runs on the last saved step; *restore* is the whole "
        "`Checkpointer.restore` (verification, compatibility checks, Orbax reading the arrays "
        "onto the mesh). The machine was shared with other jobs, so single figures vary by "
        "tens of percent; the share of restore spent verifying is the steadier figure.", "",
        "| config | checkpoint | write manifest ms (background) | verify ms | restore ms "
        "(verify included) | verify share of restore |",
        "|---|---:|---:|---:|---:|---:|", *integrity_rows,
    ]
    print("\n".join(lines))
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", SECTION, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
