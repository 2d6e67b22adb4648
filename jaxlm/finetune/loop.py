"""The fine-tuning loop, as plain code: epochs of bucketed batches, eval, best checkpoint.

``finetune(cfg)`` is what ``jaxlm finetune`` runs. Per epoch: train on the seeded batch
plan, evaluate on the validation split (loss, accuracy, macro-F1), save a checkpoint ranked
by ``finetune.eval_metric`` (Orbax keeps the latest ones and the best), and stop early after
``finetune.early_stopping`` epochs without improvement. Within an epoch a checkpoint is saved
every ``finetune.checkpoint_every`` steps, with the position in the plan, so a killed run
started again with the same command continues exactly. At the end the best checkpoint is
evaluated on the test split (validation when there is none) and reported per class.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxlm.checkpoint.checkpointer import Checkpointer, abstract_like
from jaxlm.checkpoint.export import load_params
from jaxlm.finetune.backbone import head_report, load_backbone
from jaxlm.finetune.batching import train_plan
from jaxlm.finetune.run import COMPAT_KEYS, FinetuneRun, evaluate, setup, write_labels
from jaxlm.metrics import MetricsWriter, progress_postfix
from jaxlm.models import param_count
from jaxlm.runtime.preemption import PreemptionWatcher
from jaxlm.runtime.runlock import RunLock
from jaxlm.tasks.classification import format_report
from jaxlm.train.loop import divergence_error, remedies
from jaxlm.train.state import create_train_state, is_abstract

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False, "mae": False}
REPORT_FILE = "report.json"


def _log(run: FinetuneRun, msg: str) -> None:
    if run.primary:
        tqdm.write(msg)


def _initial_state(run: FinetuneRun) -> Any:
    """A fresh train state: a new head, and the backbone loaded unless from scratch/none."""
    f = run.cfg.finetune
    state, _ = create_train_state(run.task, run.tx, run.mesh, run.rules, f.seed)
    if run.source.kind == "none" or f.from_scratch:
        why = "finetune.from_scratch" if f.from_scratch else "finetune.backbone=none"
        _log(run, f"backbone: random initialisation ({why}), architecture of "
                  f"{run.source.describe()}")
        _log(run, head_report(state.params))
    else:
        params, report = load_backbone(run.source, state.params, run.shardings.params,
                                       pooler=f.pooler)
        state = state.replace(params=params)
        _log(run, report)  # ends with the head report
    return state


def _check_health(run: FinetuneRun, state: Any, ckpt: Checkpointer) -> None:
    f = run.cfg.finetune
    err = divergence_error(state, ckpt, remedies(run.cfg, "finetune.lr", f.lr,
                                                 "finetune.clip_norm", f.clip_norm))
    if err is not None:
        raise err


def _better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value > best if HIGHER_IS_BETTER[metric] else value < best


def finetune(cfg: Any) -> dict[str, Any]:
    """Fine-tune per ``cfg.finetune``; returns the final (test) metrics and the best epoch.
    The run directory is locked for the whole run (one writer per run directory)."""
    run = setup(cfg)
    with RunLock(run.cfg.finetune.run_dir, "finetune", log=lambda m: _log(run, m),
                 enabled=run.primary):
        return _finetune(run)


def _finetune(run: FinetuneRun) -> dict[str, Any]:
    cfg, f = run.cfg, run.cfg.finetune
    run_dir = Path(f.run_dir)
    metric = f.eval_metric
    ckpt = Checkpointer(cfg, run.tokenizer, log=lambda m: _log(run, m),
                        best=(metric, HIGHER_IS_BETTER[metric]), compat_keys=COMPAT_KEYS)
    state, data_item = ckpt.restore(run.state, run.shardings)
    progress = {"epoch": 0, "batch": 0, "best": None, "best_step": None, "bad_epochs": 0,
                "history": []}
    if data_item is not None:
        progress = data_item["states"][0]
    if is_abstract(state):
        state = _initial_state(run)
    write_labels(run)
    if run.primary:
        (run_dir / "config.json").write_text(cfg.to_json())
    writer = MetricsWriter(run_dir, enabled=run.primary, tensorboard=cfg.logging.tensorboard,
                           jsonl=cfg.logging.jsonl, flush_secs=cfg.logging.flush_secs,
                           resume_step=int(state.step))  # steps logged after it are redone
    writer.config(cfg.to_dict())
    sizes = " / ".join(f"{len(d)} {name}" for name, d in run.splits.items())
    labels = ", ".join(run.names[:8]) + (" ..." if len(run.names) > 8 else "")
    _log(run, f"jaxlm finetune: {f.problem} over {len(run.names)} labels ({labels}); "
              f"{cfg.model.family} backbone {param_count(cfg.model) / 1e6:.2f}M params; "
              f"{sizes} examples; {f.epochs} epochs of {run.steps_per_epoch} steps of "
              f"{f.batch_size}; mesh {dict(run.mesh.shape)}")
    total = cfg.train.steps
    step = int(state.step)
    bar = tqdm(total=total, initial=step, desc="finetune", unit="step", dynamic_ncols=True,
               disable=not (run.primary and cfg.logging.progress))
    preemption = PreemptionWatcher()
    stopped, preempted = False, False
    window = {"t": time.perf_counter(), "steps": 0, "examples": 0, "tokens": 0}
    try:
        for epoch in range(progress["epoch"], f.epochs):
            plan = train_plan(run.splits["train"].lengths, f.batch_size, f.seed, epoch)
            for b in range(progress["batch"] if epoch == progress["epoch"] else 0, len(plan)):
                batch = run.global_batch(run.splits["train"], plan[b])
                state, m = run.train_step(state, batch)
                step += 1
                bar.update(1)
                window["steps"] += 1
                window["examples"] += int(np.sum(plan[b] >= 0))
                window["tokens"] += int(np.prod(batch["inputs"].shape))
                preempted = preemption.reached(step)  # (a collective with several processes)
                saving = (preempted or step % f.checkpoint_every == 0) and b < len(plan) - 1
                if step % f.log_every == 0 or b == len(plan) - 1 or saving:
                    _check_health(run, state, ckpt)
                if step % f.log_every == 0 or b == len(plan) - 1:
                    last = {k: float(v) for k, v in jax.device_get(m).items()}
                    dt = time.perf_counter() - window["t"]
                    last.update(examples_per_sec=window["examples"] / dt,
                                tokens_per_sec=window["tokens"] / dt, epoch=epoch + 1)
                    writer.scalars(step, last, prefix="train/")
                    bar.set_postfix(progress_postfix(last), refresh=False)
                    window = {"t": time.perf_counter(), "steps": 0, "examples": 0, "tokens": 0}
                if saving:
                    ckpt.save(step, state, {**progress, "epoch": epoch, "batch": b + 1},
                              wait=preempted)
                if preempted:
                    _log(run, f"preempted at step {step}: saved; run the same command again "
                              "to resume")
                    break
            if preempted:
                break
            ev, _ = evaluate(run, state.params, "validation")
            writer.scalars(step, ev, prefix="eval/")
            improved = _better(ev[metric], progress["best"], metric)
            progress = {**progress, "epoch": epoch + 1, "batch": 0,
                        "history": [*progress["history"], {"epoch": epoch + 1, "step": step, **ev}]}
            if improved:
                progress.update(best=ev[metric], best_step=step, bad_epochs=0)
            else:
                progress["bad_epochs"] += 1
            _log(run, f"epoch {epoch + 1}/{f.epochs}: validation loss {ev['loss']:.4f}"
                      + "".join(f", {k} {ev[k]:.4f}" for k in ("accuracy", "macro_f1", "mae")
                                if k in ev)
                      + (" (best)" if improved else ""))
            ckpt.save(step, state, progress, metrics={metric: ev[metric]})
            if f.early_stopping and progress["bad_epochs"] >= f.early_stopping:
                _log(run, f"early stopping: no better {metric} for {f.early_stopping} epochs")
                stopped = True
                break
    except BaseException:
        writer.close(success=False)
        raise
    finally:
        bar.close()
        preemption.close()
        ckpt.close()
    if preempted:
        writer.close()
        return {"preempted": True, "step": step}
    result = final_report(run, progress, writer)
    result["early_stopped"] = stopped
    writer.close()
    return result


def final_report(run: FinetuneRun, progress: dict[str, Any], writer: MetricsWriter) -> dict:
    """Evaluate the best checkpoint on the test split (else validation) and report it."""
    split = "test" if "test" in run.splits else "validation"
    target = abstract_like(jax.eval_shape(lambda s: s, run.state.params), run.shardings.params)
    params = load_params(Path(run.cfg.finetune.run_dir) / "checkpoints", target,
                         step=progress["best_step"])
    ev, sums = evaluate(run, params, split)
    writer.scalars(progress["best_step"], ev, prefix=f"{split}/")
    result: dict[str, Any] = {"split": split, "best_step": progress["best_step"],
                              "best_epoch": next(h["epoch"] for h in progress["history"]
                                                 if h["step"] == progress["best_step"]),
                              **{k: v for k, v in ev.items()}}
    lines = [f"{split} ({run.origin[split]}), best checkpoint (step {progress['best_step']}, "
             f"epoch {result['best_epoch']}): "
             + ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if k != "examples")]
    if "confusion" in sums:
        lines.append(format_report(sums["confusion"], run.names))
        result["confusion"] = np.asarray(sums["confusion"]).astype(int).tolist()
    _log(run, "\n".join(lines))
    if run.primary:
        report = {**result, "labels": run.names, "history": progress["history"]}
        (Path(run.cfg.finetune.run_dir) / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return result
