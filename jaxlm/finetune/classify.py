"""Classification fine-tuning on the one loop: epochs of bucketed batches, eval, best checkpoint.

``finetune(cfg)`` is what ``jaxlm finetune`` runs. The loop (:func:`jaxlm.train.trainer.fit`)
trains on the seeded batch plan of each epoch — the position in it follows from the step, so
a killed run started again with the same command continues exactly — and at every epoch's
end evaluates on the validation split (loss, accuracy, macro-F1) and saves a checkpoint
ranked by ``finetune.eval_metric`` (Orbax keeps the latest ones and tracks the best), with
the run's progress (best value, epochs without improvement, history) as its own item; it
stops early after ``finetune.early_stopping`` epochs without improvement. At the end the best
checkpoint is evaluated on the test split (validation when there is none) and reported per
class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.checkpoint.checkpointer import Checkpointer, abstract_like
from jaxlm.checkpoint.export import load_params
from jaxlm.finetune.backbone import head_report, load_backbone
from jaxlm.finetune.batching import train_plan
from jaxlm.finetune.run import (
    COMPAT_KEYS,
    HIGHER_IS_BETTER,
    Labeled,
    evaluate,
    setup,
    write_labels,
)
from jaxlm.metrics import MetricsWriter
from jaxlm.models import param_count
from jaxlm.runtime.runlock import RunLock
from jaxlm.tasks.classification import format_report
from jaxlm.train.state import TrainState, create_train_state, is_abstract
from jaxlm.train.trainer import Eval, Fed, Run, Verdict, Window, fit, open_writer, write_config

REPORT_FILE = "report.json"


def initial_state(run: Run, data: Labeled) -> TrainState:
    """A fresh train state: a new head, and the backbone loaded unless from scratch/none."""
    f = run.cfg.finetune
    state, _ = create_train_state(run.task, run.tx, run.mesh, run.rules, f.seed)
    if data.source.kind == "none" or f.from_scratch:
        why = "finetune.from_scratch" if f.from_scratch else "finetune.backbone=none"
        run.log(f"backbone: random initialisation ({why}), architecture of "
                f"{data.source.describe()}")
        run.log(head_report(state.params))
    else:
        params, report = load_backbone(data.source, state.params, run.shardings.params,
                                       pooler=f.pooler)
        state = state.replace(params=params)
        run.log(report)  # ends with the head report
    return state


class Epochs:
    """The training split in the seeded batch plan of each epoch, from the run's step on:
    the position follows from the step, so nothing but the step needs saving."""

    def __init__(self, run: Run, data: Labeled, start: int) -> None:
        self.run, self.data, self.step = run, data, start
        self.per_epoch = -(-len(data.splits["train"]) // run.settings.batch)
        self._plan: tuple[int, Any] | None = None  # (epoch, its plan)

    def __next__(self) -> Fed:
        epoch, b = divmod(self.step, self.per_epoch)
        if self._plan is None or self._plan[0] != epoch:
            f = self.run.cfg.finetune
            self._plan = (epoch, train_plan(self.data.splits["train"].lengths, f.batch_size,
                                            f.seed, epoch))
        rows = self._plan[1][b]
        self.step += 1
        return Fed(self.data.global_batch(self.run, self.data.splits["train"], rows),
                   int(np.sum(rows >= 0)))

    def state_dict(self) -> None:
        return None

    def close(self) -> None:
        pass


def _better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value > best if HIGHER_IS_BETTER[metric] else value < best


def finetune(cfg: Any) -> dict[str, Any]:
    """Fine-tune per ``cfg.finetune``; returns the final (test) metrics and the best epoch.
    The run directory is locked for the whole run (one writer per run directory)."""
    run, data = setup(cfg)
    with RunLock(run.cfg.finetune.run_dir, "finetune", log=run.log, enabled=run.primary):
        return _finetune(run, data)


def _finetune(run: Run, data: Labeled) -> dict[str, Any]:
    cfg, f = run.cfg, run.cfg.finetune
    metric = f.eval_metric
    ckpt = Checkpointer(cfg, run.tokenizer, log=run.log, run_dir=f.run_dir,
                        tokenizer_name=f.tokenizer, best=(metric, HIGHER_IS_BETTER[metric]),
                        compat_keys=COMPAT_KEYS)
    run.state, _, saved = ckpt.restore(run.state, run.shardings)
    progress = {"best": None, "bad_epochs": 0, "history": []}
    progress.update({k: saved[k] for k in progress if saved and k in saved})
    if is_abstract(run.state):
        run.state = initial_state(run, data)
    write_labels(run, data)
    write_config(run)
    writer = open_writer(run)
    batches = Epochs(run, data, int(run.state.step))
    sizes = " / ".join(f"{len(d)} {name}" for name, d in data.splits.items())
    labels = ", ".join(data.names[:8]) + (" ..." if len(data.names) > 8 else "")
    run.log(f"jaxlm finetune: {f.problem} over {len(data.names)} labels ({labels}); "
            f"{cfg.model.family} backbone {param_count(cfg.model) / 1e6:.2f}M params; "
            f"{sizes} examples; {f.epochs} epochs of {batches.per_epoch} steps of "
            f"{f.batch_size}; mesh {dict(run.mesh.shape)}")

    def stats(step: int, window: Window) -> dict[str, float]:
        dt = window.seconds
        return {"examples_per_sec": window.examples / dt, "tokens_per_sec": window.tokens / dt,
                "epoch": -(-step // batches.per_epoch)}

    def end_of_epoch(step: int) -> Verdict:
        epoch = step // batches.per_epoch
        ev, _ = evaluate(run, data, run.state.params, "validation")
        writer.scalars(step, ev, prefix="eval/")
        improved = _better(ev[metric], progress["best"], metric)
        progress["history"] = [*progress["history"], {"epoch": epoch, "step": step, **ev}]
        if improved:
            progress.update(best=ev[metric], bad_epochs=0)
        else:
            progress["bad_epochs"] += 1
        run.log(f"epoch {epoch}/{f.epochs}: validation loss {ev['loss']:.4f}"
                + "".join(f", {k} {ev[k]:.4f}" for k in ("accuracy", "macro_f1", "mae")
                          if k in ev)
                + (" (best)" if improved else ""))
        stop = bool(f.early_stopping) and progress["bad_epochs"] >= f.early_stopping
        if stop:
            run.log(f"early stopping: no better {metric} for {f.early_stopping} epochs")
        return Verdict(rank={metric: ev[metric]}, stop=stop)

    out = fit(run, batches, ckpt, writer, stats=stats, progress=lambda: progress,
              evals=Eval(batches.per_epoch, end_of_epoch, at_last=True, ranks=True),
              desc="finetune")
    if out.preempted:
        writer.close()
        return {"preempted": True, "step": out.steps}
    result = final_report(run, data, progress, ckpt.best(), writer)
    result["early_stopped"] = out.stopped
    writer.close()
    return result


def final_report(run: Run, data: Labeled, progress: dict[str, Any], best_step: int | None,
                 writer: MetricsWriter) -> dict:
    """Evaluate the best checkpoint on the test split (else validation) and report it."""
    split = "test" if "test" in data.splits else "validation"
    target = abstract_like(jax.eval_shape(lambda s: s, run.state.params), run.shardings.params)
    params = load_params(run.settings.run_dir / "checkpoints", target, step=best_step)
    ev, sums = evaluate(run, data, params, split)
    writer.scalars(best_step, ev, prefix=f"{split}/")
    result: dict[str, Any] = {"split": split, "best_step": best_step,
                              "best_epoch": next(h["epoch"] for h in progress["history"]
                                                 if h["step"] == best_step),
                              **{k: v for k, v in ev.items()}}
    lines = [f"{split} ({data.origin[split]}), best checkpoint (step {best_step}, "
             f"epoch {result['best_epoch']}): "
             + ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if k != "examples")]
    if "confusion" in sums:
        lines.append(format_report(sums["confusion"], data.names))
        result["confusion"] = np.asarray(sums["confusion"]).astype(int).tolist()
    run.log("\n".join(lines))
    if run.primary:
        report = {**result, "labels": data.names, "history": progress["history"]}
        (Path(run.settings.run_dir) / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return result
