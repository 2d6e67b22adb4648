"""The one training loop, as plain code: step, log, check health, evaluate, save.

Every objective runs on it: pretraining (:mod:`jaxlm.train.pretrain`) and fine-tuning by
epochs (:mod:`jaxlm.finetune.epochs`: classification, generation). An objective brings a
:class:`Run` (its task, optimizer and jitted steps on the mesh, and the :class:`Settings` of
the config section it runs), a source of global batches and an :class:`Eval` hook; the loop
owns the rest, each at its own cadence:

* **logging** every ``logging.every`` steps, the first and the last (train metrics and the
  objective's throughput figures, to TensorBoard / ``metrics.jsonl`` and the progress bar);
* **divergence**, checked whenever it logs or saves (the step marks it on device): the run
  stops without saving the diverged state, naming the last good checkpoint and remedies;
* **evaluation** every ``Eval.every`` steps; an evaluation may rank the checkpoint saved
  with it (Orbax tracks the best) and may stop the run (early stopping);
* **checkpoints** every ``checkpoint.every`` steps, at the end and with every ranked
  evaluation (state, the batch source's position, the objective's progress record);
* **preemption**: on SIGTERM, save after the current step and stop.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from jaxlm.checkpoint.checkpointer import Checkpointer
from jaxlm.config import Config
from jaxlm.errors import TrainingError
from jaxlm.metrics import MetricsWriter, progress_postfix
from jaxlm.models.trainable import Trainable
from jaxlm.profiling import StepProfiler, device_memory, memory_summary
from jaxlm.runtime import hostmem
from jaxlm.runtime.preemption import PreemptionWatcher
from jaxlm.sharding import Rules, activate
from jaxlm.tasks import Task, add_sums
from jaxlm.train.state import TrainState

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the loop takes from the config section it runs (``train`` or ``finetune``).

    Nothing else of that section is read by the loop, and no section is rewritten so that
    the loop, the checkpointer or the mesh can find these values elsewhere."""

    section: str  # "train" | "finetune": names settings in messages
    run_dir: Path
    steps: int  # optimizer steps in all
    batch: int  # examples per step, all devices
    seed: int
    lr: float
    clip_norm: float | None
    tips: tuple[str, ...] = ()  # the objective's own remedies after a divergence


@dataclasses.dataclass
class Run:
    """Everything a training run is made of, built once by the objective's ``setup``."""

    cfg: Config
    settings: Settings
    mesh: Mesh
    rules: Rules
    task: Task
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state: TrainState  # abstract (shapes only) until restored or initialised
    shardings: TrainState
    batch_sharding: NamedSharding
    train_step: Any
    eval_step: Any
    tokenizer: Any
    trainable: Trainable | None = None  # None: every parameter trains

    @property
    def primary(self) -> bool:
        return jax.process_index() == 0

    @property
    def local_batch(self) -> int:
        return self.settings.batch // jax.process_count()

    def bar(self, what: str) -> str | None:
        """A progress bar's description for ``what`` on this process, or None (no bar: not
        process 0, or ``logging.progress=false``)."""
        return what if self.primary and self.cfg.logging.progress else None

    def log(self, msg: str) -> None:
        """One line to the terminal, from process 0 (above the progress bar)."""
        if self.primary:
            tqdm.write(msg)


class Batches(Protocol):
    """The objective's training batches, in order from the run's current step."""

    def __next__(self) -> Fed: ...

    def state_dict(self) -> dict[str, Any] | None:
        """This process's position, saved as checkpoint item ``data``; None: nothing to
        save (the position follows from the step)."""

    def close(self) -> None: ...


@dataclasses.dataclass
class Fed:
    """One step's input: the global batch and how many real (non-padding) examples it has."""

    batch: Batch
    examples: int


@dataclasses.dataclass
class Verdict:
    """What an evaluation decided: ``rank`` the checkpoint saved now by these metrics (the
    best is tracked), and/or ``stop`` the run."""

    rank: dict[str, float] | None = None
    stop: bool = False


@dataclasses.dataclass
class Eval:
    """The evaluation hook: ``fn(step)`` every ``every`` steps (at the last step too when
    ``at_last``; else the objective evaluates after the loop). ``ranks``: its verdicts rank
    checkpoints, so a preempted run still evaluates before it saves."""

    every: int
    fn: Callable[[int], Verdict]
    at_last: bool = False
    ranks: bool = False

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 and (step != total or self.at_last)


@dataclasses.dataclass
class Outcome:
    """How :func:`fit` ended and the last train metrics it logged."""

    steps: int
    last: dict[str, float]
    first_loss: float | None = None
    preempted: bool = False
    stopped: bool = False


@dataclasses.dataclass
class Window:
    """Steps, examples and tokens since the throughput was last logged."""

    start: float = dataclasses.field(default_factory=time.perf_counter)
    steps: int = 0
    examples: int = 0
    tokens: int = 0

    def add(self, fed: Fed) -> None:
        self.steps += 1
        self.examples += fed.examples
        self.tokens += int(np.prod(fed.batch["inputs"].shape))

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


Stats = Callable[[int, Window], dict[str, float]]  # (step, window) → throughput figures


def fit(run: Run, batches: Batches, ckpt: Checkpointer, writer: MetricsWriter, *,
        stats: Stats, evals: Eval | None = None,
        progress: Callable[[], dict[str, Any] | None] = lambda: None,
        profiler: StepProfiler | None = None, memory_report: bool = False,
        desc: str = "train", lengths: int | None = None) -> Outcome:
    """Train ``run.state`` from its step to ``run.settings.steps`` (see the module
    docstring). ``stats`` gives the throughput figures logged for a window of steps (the
    first step, mostly compilation, is never timed); ``progress`` the objective's record
    saved with every checkpoint. ``lengths``: how many padded batch shapes the objective
    can feed; each new one is announced as it compiles (k of n), and the progress bar's
    elapsed time and ETA leave compiling steps out. Closes ``batches`` and ``ckpt`` (a save
    in flight is final when this returns)."""
    cfg, s = run.cfg, run.settings
    start = int(run.state.step)
    out = Outcome(steps=start, last={})
    bar = tqdm(total=s.steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
               smoothing=0, disable=not (run.primary and cfg.logging.progress))
    shapes: set[tuple[int, ...]] = set()
    preemption = PreemptionWatcher()  # SIGTERM: save after this step and stop
    window = Window()
    try:
        for step in range(start, s.steps):
            fed = next(batches)
            if step == start and memory_report:
                _memory_report(run, fed.batch, writer, step)
            if profiler is not None:
                profiler.before(step + 1)
            shape = tuple(next(iter(fed.batch.values())).shape)
            compiling = shape not in shapes
            if compiling:
                shapes.add(shape)
                of = f" ({len(shapes)} of at most {lengths})" if lengths else ""
                run.log(f"compiling the train step for batches of {' x '.join(map(str, shape))}"
                        f"{of}")
                t0 = time.perf_counter()
            run.state, metrics = run.train_step(run.state, fed.batch)
            kept = hostmem.bound_retention()  # CPU: stop keeping freed memory past a budget
            if kept is not None:
                run.log(f"host memory: {kept / 2**30:.1f} GiB resident, past the budget for "
                        f"keeping freed memory ({hostmem.BUDGET_ENV}); freed memory goes back "
                        "to the system from now on")
            if compiling and not bar.disable:  # the bar's rate (so ETA): steady steps only
                jax.block_until_ready(metrics)
                bar.start_t += time.perf_counter() - t0
            if profiler is not None and profiler.after(step + 1, run.state):
                writer.event(step + 1, "profile", path=str(profiler.log_dir),
                             steps="{}-{}".format(*profiler.range))
            window.add(fed)
            bar.update(1)
            done = out.steps = step + 1
            out.preempted = preemption.reached(done)  # (a collective with several processes)
            evaluating = evals is not None and evals.due(done, s.steps)
            ranked = evaluating and evals.ranks
            saving = out.preempted or ranked or ckpt.due(done, s.steps)
            logging = (done % cfg.logging.every == 0 or done == s.steps or step == start
                       or ranked)
            if logging or saving:
                err = divergence_error(run.state, ckpt, remedies(run))
                if err is not None:
                    raise err
            if logging:
                out.last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if out.first_loss is None:
                    out.first_loss = out.last["loss"]
                if step != start:  # the first step's time is mostly compilation: not timed
                    out.last.update(stats(done, window))
                out.last.update(device_memory())
                writer.scalars(done, out.last, prefix="train/")
                bar.set_postfix(progress_postfix(out.last), refresh=False)
                window = Window()
            verdict = Verdict()
            if evaluating and (ranked or not out.preempted):
                verdict = evals.fn(done)
                window = Window()  # evaluation time is not training throughput
            if saving and ckpt.save(done, run.state, batches.state_dict(), progress=progress(),
                                    wait=out.preempted, metrics=verdict.rank):
                writer.event(done, "checkpoint", path=str(ckpt.directory / str(done)))
            if out.preempted:
                run.log(f"preempted at step {done}: {ckpt.describe(done)}; run the same "
                        "command again to resume")
                break
            if verdict.stop:
                out.stopped = True
                break
    except BaseException:
        writer.close(success=False)
        raise
    finally:
        if profiler is not None:
            profiler.close()
        bar.close()
        batches.close()
        preemption.close()
        ckpt.close()  # waits for a save in flight to be final
    return out


def evaluate(eval_step: Callable[[Any, Batch], Any], params: Any,
             batches: Iterable[Batch], desc: str | None = None,
             total: int | None = None) -> dict[str, Any] | None:
    """The task's loss sums of ``params`` over ``batches`` (global batches), added up on
    the mesh; None when there were none. The one evaluation loop (pretraining's held-out
    stream, fine-tuning's splits, ``jaxlm evaluate``): the task's ``eval_metrics`` of the
    sums gives the metrics. ``desc``: show a progress bar (``total`` batches) under it."""
    totals = None
    if desc is not None:
        batches = tqdm(batches, desc=desc, total=total, unit="batch", leave=False,
                       dynamic_ncols=True)
    for batch in batches:
        totals = add_sums(totals, eval_step(params, batch))
    return totals


# ------------------------------------------------------------------------------ divergence


def remedies(run: Run) -> list[str]:
    """What to change after a divergence, leaving out what is already in effect."""
    s = run.settings
    tips = [f"lower {s.section}.lr (now {s.lr:.3g})"]
    if s.clip_norm is None:
        tips.append(f"set {s.section}.clip_norm=1.0")
    if run.cfg.model.dtype == "bfloat16":
        tips.append("try model.dtype=float32")
    return tips + list(s.tips)


def divergence_error(state: TrainState, ckpt: Checkpointer,
                     tips: list[str]) -> TrainingError | None:
    """The error that stops a run whose state the train step marked diverged, naming the last
    good checkpoint and the remedies ``tips``; None while the state is healthy."""
    ema, bad, loss = (float(x) for x in jax.device_get(state.health))
    if bad == 0:
        return None
    ckpt.wait()
    # The loss of step b is computed on the parameters after b - 1 updates: the checkpoint of
    # step b - 1 (saved while its own loss still looked fine) already holds the bad update.
    moved = ckpt.discard_from(int(bad) - 1)
    why = (f"the loss became {loss:.4g}" if not np.isfinite(loss) else
           f"the loss jumped to {loss:.4g} against a running average of {ema:.4g}")
    good = ckpt.latest()
    where = (f"the last good checkpoint is step {good} ({ckpt.directory / str(good)})"
             if good is not None else "no good checkpoint was saved")
    if moved:
        where = (f"the checkpoint of step {', '.join(map(str, moved))} held the diverging "
                 f"update and was moved to {ckpt.directory.parent / 'checkpoints_diverged'}; "
                 + where)
    return TrainingError(f"training diverged at step {int(bad)}: {why}; stopped without saving "
                         f"the diverged state; {where}; to go on: {', '.join(tips)}")


def _memory_report(run: Run, batch: Batch, writer: MetricsWriter, step: int) -> None:
    """Compile the step for this batch (the first call then reuses the executable) and print
    and log bytes per device of params, optimizer state and the step's temporaries."""
    with activate(run.mesh, run.rules):
        compiled = run.train_step.jitted.lower(run.state, batch).compile()
    mem = memory_summary(compiled, run.state.params, run.state.opt_state)
    writer.scalars(step, mem.scalars(), prefix="memory/")
    run.log(mem.format())


def write_config(run: Run) -> None:
    """``RUN_DIR/config.json``: the run's resolved config (what later verbs read back)."""
    if run.primary:
        run.settings.run_dir.mkdir(parents=True, exist_ok=True)
        (run.settings.run_dir / "config.json").write_text(run.cfg.to_json())


def open_writer(run: Run) -> MetricsWriter:
    """The run's metrics writer (process 0 writes); rows after the resumed step, from an
    earlier attempt, are dropped since those steps are redone."""
    lg = run.cfg.logging
    writer = MetricsWriter(run.settings.run_dir, enabled=run.primary,
                           tensorboard=lg.tensorboard, jsonl=lg.jsonl,
                           flush_secs=lg.flush_secs, resume_step=int(run.state.step))
    writer.config(run.cfg.to_dict())
    return writer
