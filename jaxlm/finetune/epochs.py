"""Fine-tuning by epochs on the one loop, for every objective: evaluate, rank, stop, report.

:func:`run_epochs` is what every fine-tuning objective (classification, generation) runs.
The loop (:func:`jaxlm.train.trainer.fit`) trains on the objective's seeded batch plan of each
epoch — the position in it follows from the step, so a killed run started again with the
same command continues exactly — and at every epoch's end evaluates on the validation split
and saves a checkpoint ranked by ``finetune.eval_metric`` (Orbax keeps the latest ones and
tracks the best), with the run's progress (best value, epochs without improvement, history)
as its own item; it stops early after ``finetune.early_stopping`` epochs without
improvement. At the end the best checkpoint is evaluated on the test split (validation when
there is none) and reported.

An :class:`Objective` brings what differs: the data and its batches, the initial state,
the evaluation of a split and the lines of the final report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from jaxlm.checkpoint.checkpointer import Checkpointer, abstract_like
from jaxlm.checkpoint.export import load_params
from jaxlm.finetune.run import COMPAT_KEYS, HIGHER_IS_BETTER
from jaxlm.metrics import MetricsWriter
from jaxlm.models.trainable import join, split, trained_part
from jaxlm.runtime.runlock import RunLock
from jaxlm.train.state import TrainState, is_abstract, shapes_of
from jaxlm.train.trainer import Eval, Fed, Run, Verdict, Window, fit, open_writer, write_config

REPORT_FILE = "report.json"
# metrics shown in an epoch's line, where the objective has them
SHOWN = ("perplexity", "accuracy", "macro_f1", "mae", "exact_match", "f1", "rouge_l", "chrf",
         "bleu")


class Objective(Protocol):
    """What a fine-tuning objective brings to :func:`run_epochs`."""

    run: Run
    origin: dict[str, str]  # split -> where it came from
    per_epoch: int  # optimizer steps per epoch

    def plan(self, epoch: int) -> list[Any]:
        """The epoch's batches (whatever :meth:`feed` takes), in training order."""

    def feed(self, batch: Any) -> Fed:
        """One planned batch as the global batch of the step."""

    def initial_state(self) -> TrainState:
        """A fresh train state (the backbone's weights loaded unless from scratch)."""

    def prepare(self) -> None:
        """Write what later verbs read beside config.json (e.g. the label names)."""

    def describe(self) -> str:
        """The run's opening line: the problem, the backbone, the data, the schedule."""

    def evaluate(self, params: Any, split: str) -> tuple[dict[str, float], Any]:
        """(metrics, summed counts) of ``params`` on ``split``."""

    def report(self, params: Any, split: str, sums: Any) -> tuple[list[str], dict[str, Any]]:
        """The final report's extra lines and result fields for the best ``params``."""


class Epochs:
    """The objective's training batches, in the plan of each epoch, from the run's step on:
    the position follows from the step, so nothing but the step needs saving."""

    def __init__(self, objective: Objective, start: int) -> None:
        self.objective, self.step = objective, start
        self._plan: tuple[int, list[Any]] | None = None  # (epoch, its plan)

    def __next__(self) -> Fed:
        epoch, b = divmod(self.step, self.objective.per_epoch)
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self.objective.plan(epoch))
        self.step += 1
        return self.objective.feed(self._plan[1][b])

    def state_dict(self) -> None:
        return None

    def close(self) -> None:
        pass


def better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value > best if HIGHER_IS_BETTER[metric] else value < best


def checkpoint_policy(cfg: Any) -> Any:
    """Fine-tuning's checkpoint defaults: a save at every epoch's end (the ranked one), at
    the last step and on preemption, keeping the best and the latest only. A
    ``checkpoint.every`` / ``checkpoint.keep`` the user sets is kept (a step cadence, more
    checkpoints)."""
    given = cfg.checkpoint.model_fields_set
    update = {k: v for k, v in (("every", 2**31 - 1), ("keep", 1)) if k not in given}
    return cfg.model_copy(update={"checkpoint": cfg.checkpoint.model_copy(update=update)})


def run_epochs(objective: Objective) -> dict[str, Any]:
    """Fine-tune (see the module docstring); returns the final (test) metrics and the best
    epoch. The run directory is locked for the whole run (one writer per run directory)."""
    run = objective.run
    with RunLock(run.cfg.finetune.run_dir, "finetune", log=run.log, enabled=run.primary):
        return _run_epochs(objective)


def _run_epochs(objective: Objective) -> dict[str, Any]:
    run = objective.run
    cfg, f = run.cfg, run.cfg.finetune
    metric = f.eval_metric
    ckpt = Checkpointer(checkpoint_policy(cfg), run.tokenizer, log=run.log, run_dir=f.run_dir,
                        tokenizer_name=f.tokenizer, best=(metric, HIGHER_IS_BETTER[metric]),
                        compat_keys=COMPAT_KEYS, trainable=run.trainable)
    run.state, _, saved = ckpt.restore(run.state, run.shardings)
    progress = {"best": None, "bad_epochs": 0, "history": []}
    progress.update({k: saved[k] for k in progress if saved and k in saved})
    if is_abstract(run.state):
        run.state = objective.initial_state()
    elif run.trainable is not None:  # resumed: checkpoints hold the trained part only
        frozen = split(objective.initial_state().params, run.trainable)[1]
        run.state = run.state.replace(params=join(trained_part(run.state.params,
                                                               run.trainable), frozen))
    objective.prepare()
    write_config(run)
    writer = open_writer(run)
    batches = Epochs(objective, int(run.state.step))
    run.log(objective.describe())
    last_eval: dict[str, Any] = {}  # the latest validation: step, metrics, sums

    def stats(step: int, window: Window) -> dict[str, float]:
        dt = window.seconds
        return {"examples_per_sec": window.examples / dt, "tokens_per_sec": window.tokens / dt,
                "epoch": -(-step // objective.per_epoch)}

    def end_of_epoch(step: int) -> Verdict:
        epoch = step // objective.per_epoch
        ev, sums = objective.evaluate(run.state.params, "validation")
        last_eval.update(step=step, metrics=ev, sums=sums)
        writer.scalars(step, ev, prefix="eval/")
        improved = better(ev[metric], progress["best"], metric)
        progress["history"] = [*progress["history"], {"epoch": epoch, "step": step, **ev}]
        if improved:
            progress.update(best=ev[metric], bad_epochs=0)
        else:
            progress["bad_epochs"] += 1
        run.log(f"epoch {epoch}/{f.epochs}: validation loss {ev['loss']:.4f}"
                + "".join(f", {k} {ev[k]:.4f}" for k in SHOWN if k in ev)
                + (" (best)" if improved else ""))
        stop = bool(f.early_stopping) and progress["bad_epochs"] >= f.early_stopping
        if stop:
            run.log(f"early stopping: no better {metric} for {f.early_stopping} epochs")
        return Verdict(rank={metric: ev[metric]}, stop=stop)

    out = fit(run, batches, ckpt, writer, stats=stats, progress=lambda: progress,
              evals=Eval(objective.per_epoch, end_of_epoch, at_last=True, ranks=True),
              desc="finetune", lengths=len(getattr(objective.data, "sizes", ())) or None)
    if out.preempted:
        writer.close()
        return {"preempted": True, "step": out.steps}
    result = final_report(objective, progress, ckpt.best(), writer, last_eval)
    result["early_stopped"] = out.stopped
    writer.close()
    return result


def final_report(objective: Objective, progress: dict[str, Any], best_step: int | None,
                 writer: MetricsWriter, last_eval: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test split (else validation) and report it.

    Nothing is done twice: when the best checkpoint is the state in memory its parameters
    are not read back, and when the split is validation and ``last_eval`` (the latest
    end-of-epoch evaluation: step, metrics, sums) is of that step, it is the result (the
    same parameters on the same data: e.g. 4-6 s of a 60-s MiniLM run)."""
    run = objective.run
    split = "test" if "test" in objective.origin else "validation"
    if best_step == int(run.state.step):
        params = run.state.params
    else:
        target = abstract_like(shapes_of(run.state.params), run.shardings.params)
        params = load_params(run.settings.run_dir / "checkpoints", target, step=best_step)
    last_eval = last_eval or {}
    if split == "validation" and last_eval.get("step") == best_step:
        ev, sums = last_eval["metrics"], last_eval["sums"]
    else:
        ev, sums = objective.evaluate(params, split)
    writer.scalars(best_step, ev, prefix=f"{split}/")
    result: dict[str, Any] = {"split": split, "best_step": best_step,
                              "best_epoch": next(h["epoch"] for h in progress["history"]
                                                 if h["step"] == best_step),
                              **{k: v for k, v in ev.items()}}
    lines = [f"{split} ({objective.origin[split]}), best checkpoint (step {best_step}, "
             f"epoch {result['best_epoch']}): "
             + ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if k != "examples")]
    more_lines, more = objective.report(params, split, sums)
    lines += more_lines
    result.update(more)
    run.log("\n".join(lines))
    if run.primary:
        report = {**result, "history": progress["history"]}
        (Path(run.settings.run_dir) / REPORT_FILE).write_text(json.dumps(report, indent=2))
    result.pop("predictions", None)  # (every one of them: in report.json only)
    return result
