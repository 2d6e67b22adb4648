"""The pretraining loop, as plain code: set up, then step / log / eval / checkpoint.

``train(cfg)`` is what ``jaxlm train`` runs. Everything sharded is created through the mesh
and logical rules of ``jaxlm.sharding``; data arrives per host and is assembled into global
arrays; only process 0 prints and writes metrics.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from jaxlm.checkpoint.checkpointer import Checkpointer
from jaxlm.config import Config
from jaxlm.data.pipeline import build_pipeline, check_vocab, to_global
from jaxlm.data.tokenizer import load_tokenizer, special_ids
from jaxlm.errors import TrainingError
from jaxlm.generate import Generator, Sampling
from jaxlm.metrics import MetricsWriter, progress_postfix
from jaxlm.models import param_count
from jaxlm.models.layers import resolve_auto
from jaxlm.profiling import (
    StepProfiler,
    device_memory,
    memory_summary,
    peak_flops_per_device,
    throughput,
)
from jaxlm.runtime.distributed import start as start_process
from jaxlm.runtime.preemption import PreemptionWatcher
from jaxlm.runtime.runlock import RunLock
from jaxlm.sharding import Rules, activate, batch_sharding, logical_rules, make_mesh
from jaxlm.tasks import Task, add_sums, pretraining_task
from jaxlm.train.init_from import apply_init_from, load_init_from
from jaxlm.train.optim import lr_schedule, make_optimizer
from jaxlm.train.state import TrainState, create_train_state, is_abstract
from jaxlm.train.step import jit_train_step, make_eval_step, make_train_step


@dataclasses.dataclass
class Run:
    """Everything a training run is made of, built once by :func:`setup`."""

    cfg: Config
    mesh: Mesh
    rules: Rules
    task: Task
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state: TrainState
    shardings: TrainState
    batch_sharding: NamedSharding
    train_step: Any
    eval_step: Any
    tokenizer: Any
    generator: Generator | None = None  # for samples; built once, on the first one

    @property
    def primary(self) -> bool:
        return jax.process_index() == 0

    @property
    def local_batch(self) -> int:
        return self.cfg.train.global_batch // jax.process_count()


def setup(cfg: Config, init: bool = True) -> Run:
    """Mesh, tokenizer, model, optimizer and sharded state; config errors surface here first.

    ``init=False`` leaves ``run.state`` abstract (shapes and dtypes only), so resuming from a
    checkpoint never holds a freshly initialised copy of the state next to the restored one.
    """
    start_process(cfg)  # jax.distributed (several processes) and RUN_DIR/logs/process_N.log
    mesh = make_mesh(cfg)  # checks the mesh and batch against the device count
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    check_vocab(tokenizer, cfg.model.vocab_size)
    rules = logical_rules(cfg.mesh)
    task = pretraining_task(cfg)  # next-token (decoders) or masked-LM (encoders)
    tx, schedule = make_optimizer(cfg.train), lr_schedule(cfg.train)
    state, shardings = create_train_state(task, tx, mesh, rules, cfg.train.seed,
                                          abstract=not init)
    bs = batch_sharding(mesh, rules)
    step_fn = make_train_step(task, tx, schedule, cfg.train.grad_accum, cfg.train.spike_factor)
    train_step = jit_train_step(step_fn, shardings, bs, mesh, rules)
    eval_step = make_eval_step(task, shardings, bs, mesh, rules)
    return Run(cfg, mesh, rules, task, tx, schedule, state, shardings, bs, train_step, eval_step,
               tokenizer)


def evaluate(run: Run) -> dict[str, float] | None:
    """The task's held-out metrics (loss, perplexity, accuracy) over the first
    ``train.eval_batches`` batches."""
    if run.cfg.data.eval is None:
        return None
    pipe = build_pipeline(run.cfg.data, "eval", run.local_batch, jax.process_index(),
                          jax.process_count(), repeat=False)
    totals = None
    try:
        # Every process runs exactly eval_batches steps (the collectives must line up); one
        # whose finite stream ends first feeds all-padding batches, which weigh nothing.
        for _ in range(run.cfg.train.eval_batches):
            local = next(pipe, None)
            if local is None:
                local = pipe.padding_batch()
            totals = add_sums(totals, run.eval_step(run.state.params,
                                                    to_global(local, run.batch_sharding)))
    finally:
        pipe.close()
    if totals is None or totals["weight"] == 0:
        return None
    return run.task.eval_metrics(totals)


SAMPLE_SETTINGS = Sampling(temperature=0.8, top_k=40)  # the samples logged during training


def sample_generator(run: Run) -> Generator:
    """The run's generator on its mesh, built once so every sample reuses its compiled steps."""
    if run.generator is None:
        ids = special_ids(run.tokenizer)
        run.generator = Generator(run.cfg.model, run.state.params, run.tokenizer, run.mesh,
                                  run.rules, bos_id=ids.bos, eos_id=ids.eos)
    return run.generator


def generate_sample(run: Run, prompt: str, n_tokens: int) -> str:
    """``prompt`` continued by up to ``n_tokens`` tokens of the current parameters."""
    generator = sample_generator(run)
    generator.params = run.state.params
    [completion] = generator.generate([prompt], n_tokens, SAMPLE_SETTINGS,
                                      seed=run.cfg.train.seed)
    return prompt + completion.text


def divergence_error(state: TrainState, ckpt: Checkpointer,
                     tips: list[str]) -> TrainingError | None:
    """The error that stops a run whose state the train step marked diverged, naming the last
    good checkpoint and the remedies ``tips`` (only ones not already in effect); None while
    the state is healthy."""
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


def remedies(cfg: Config, lr_key: str, lr: float, clip_key: str,
             clip: float | None) -> list[str]:
    """What to change after a divergence, leaving out what is already in effect."""
    tips = [f"lower {lr_key} (now {lr:.3g})"]
    if clip is None:
        tips.append(f"set {clip_key}=1.0")
    if resolve_auto(cfg.model).dtype == "bfloat16":
        tips.append("try model.dtype=float32")
    if lr_key == "train.lr":
        t = cfg.train
        if t.z_loss == 0:
            tips.append("add train.z_loss=1e-4")
        if t.warmup_steps < max(1, t.steps // 20):
            tips.append(f"warm up longer (train.warmup_steps={t.warmup_steps})")
    return tips


def _log(run: Run, msg: str) -> None:
    if run.primary:
        tqdm.write(msg)


def _memory_report(run: Run, batch: Any, writer: MetricsWriter, step: int) -> None:
    """Compile the step for this batch (the first call then reuses the executable) and print
    and log bytes per device of params, optimizer state and the step's temporaries."""
    with activate(run.mesh, run.rules):
        compiled = run.train_step.jitted.lower(run.state, batch).compile()
    mem = memory_summary(compiled, run.state.params, run.state.opt_state)
    writer.scalars(step, mem.scalars(), prefix="memory/")
    _log(run, mem.format())


def train(cfg: Config) -> dict[str, Any]:
    """Pretrain per ``cfg``; returns the final metrics (train loss, eval loss, perplexity).
    The run directory is locked for the whole run (one writer per run directory)."""
    start_process(cfg)  # jax.distributed before anything (init_from may read a checkpoint)
    cfg, source = apply_init_from(cfg)  # model.init_from: its architecture and tokenizer
    StepProfiler(cfg.train.profile_steps, Path(cfg.train.run_dir) / "profile",
                 cfg.train.steps).close()  # checks train.profile_steps before anything starts
    run = setup(cfg, init=False)
    with RunLock(cfg.train.run_dir, "train", log=lambda msg: _log(run, msg),
                 enabled=run.primary):
        return _train(run, source)


def _train(run: Run, source: Any) -> dict[str, Any]:
    cfg = run.cfg
    t = cfg.train
    run_dir = Path(t.run_dir)
    profiler = StepProfiler(t.profile_steps, run_dir / "profile", t.steps)
    # The MFU denominator: on a CPU measured (once per machine, cached) before any other work.
    peak_flops = peak_flops_per_device(cfg.logging.peak_tflops)
    # Data sources are opened (and bad input refused) before anything is written or restored.
    pipe = build_pipeline(cfg.data, "train", run.local_batch, jax.process_index(),
                          jax.process_count())
    if cfg.data.eval is not None:  # a bad eval source fails now, not after a save
        build_pipeline(cfg.data, "eval", run.local_batch, jax.process_index(),
                       jax.process_count(), repeat=False).close()
    ckpt = Checkpointer(cfg, run.tokenizer, log=lambda msg: _log(run, msg))
    run.state, data_state = ckpt.restore(run.state, run.shardings)  # checkpoint.resume
    if is_abstract(run.state):  # nothing to resume from: initialise
        run.state, _ = create_train_state(run.task, run.tx, run.mesh, run.rules, t.seed)
        if source is not None:  # and load model.init_from's weights
            params, report = load_init_from(source, run.state.params, run.shardings.params)
            run.state = run.state.replace(params=params)
            _log(run, report)
    start = int(run.state.step)
    writer = MetricsWriter(run_dir, enabled=run.primary, tensorboard=cfg.logging.tensorboard,
                           jsonl=cfg.logging.jsonl, flush_secs=cfg.logging.flush_secs,
                           resume_step=start)  # steps logged after it are redone: dropped
    writer.config(cfg.to_dict())
    if run.primary:
        (run_dir / "config.json").write_text(cfg.to_json())
    n_params = param_count(cfg.model)
    dtype = resolve_auto(cfg.model).dtype
    _log(run, f"jaxlm: {cfg.model.family} model, {n_params / 1e6:.2f}M params, {dtype} compute, "
              "mesh "
              f"{dict(run.mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} "
              f"device(s), {t.steps} steps of {t.global_batch}x{cfg.data.seq_len} tokens")

    ckpt.load_data_state(pipe, data_state)
    preemption = PreemptionWatcher()  # SIGTERM: save after this step and exit
    samples = t.sample_tokens > 0 and cfg.model.causal  # an encoder does not generate text
    if samples:  # a sample prompt that does not fit fails now, not at the first eval
        sample_generator(run).encode(t.sample_prompt, "train.sample_prompt")
    bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not (run.primary and cfg.logging.progress))
    last: dict[str, float] = {}
    first_loss: float | None = None
    preempted = False
    window_start, window_steps = time.perf_counter(), 0
    try:
        for step in range(start, t.steps):
            batch = to_global(next(pipe), run.batch_sharding)
            if step == start and cfg.logging.memory_summary:
                _memory_report(run, batch, writer, step)
            profiler.before(step + 1)
            run.state, metrics = run.train_step(run.state, batch)
            if profiler.after(step + 1, run.state):
                writer.event(step + 1, "profile", path=str(profiler.log_dir),
                             steps=f"{t.profile_steps[0]}-{t.profile_steps[1]}")
            window_steps += 1
            bar.update(1)
            done = step + 1
            preempted = preemption.reached(done)  # (a collective with several processes)
            saving = preempted or ckpt.due(done)
            if done % t.log_every == 0 or done == t.steps or step == start or saving:
                err = divergence_error(run.state, ckpt, remedies(cfg, "train.lr", t.lr,
                                                                 "train.clip_norm", t.clip_norm))
                if err is not None:
                    raise err
            if done % t.log_every == 0 or done == t.steps or step == start:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                first_loss = last["loss"] if first_loss is None else first_loss
                if step != start:  # the first step's time is mostly compilation: not timed
                    step_time = (time.perf_counter() - window_start) / window_steps
                    last["step_time"] = step_time
                    last.update(throughput(cfg.model, cfg.data.seq_len, t.global_batch,
                                           step_time, jax.device_count(), peak_flops))
                last.update(device_memory())
                writer.scalars(done, last, prefix="train/")
                bar.set_postfix(progress_postfix(last), refresh=False)
                window_start, window_steps = time.perf_counter(), 0
            if saving and ckpt.save(done, run.state, pipe.state_dict(),
                                                           wait=preempted):
                writer.event(done, "checkpoint", path=str(ckpt.directory / str(done)))
            if preempted:
                _log(run, f"preempted at step {done}: {ckpt.describe(done)}; run the same "
                          "command again to resume")
                break
            if done % t.eval_every == 0 and done != t.steps:
                ev = evaluate(run)
                if ev:
                    writer.scalars(done, ev, prefix="eval/")
                    _log(run, f"step {done}: eval loss {ev['loss']:.4f}, "
                              f"perplexity {ev['perplexity']:.2f}")
                if samples and cfg.logging.eval_samples:  # all processes run it
                    writer.text(done, "samples", generate_sample(run, t.sample_prompt,
                                                                 t.sample_tokens))
                window_start, window_steps = time.perf_counter(), 0
    except BaseException:
        writer.close(success=False)
        raise
    finally:
        profiler.close()
        bar.close()
        pipe.close()
        preemption.close()
        ckpt.close()  # waits for a save in flight to be final

    if preempted:
        writer.close()
        return {"preempted": True, "steps": done, "final_loss": last.get("loss")}

    result: dict[str, Any] = {"first_loss": first_loss, "final_loss": last.get("loss"),
                              "steps": t.steps}
    ev = evaluate(run)
    if ev:
        writer.scalars(t.steps, ev, prefix="eval/")
        result.update(eval_loss=ev["loss"], perplexity=ev["perplexity"])
        _log(run, f"held-out loss {ev['loss']:.4f}, perplexity {ev['perplexity']:.2f}")
    if samples:  # every process runs the (sharded) forward; process 0 logs
        text = generate_sample(run, t.sample_prompt, t.sample_tokens)
        writer.text(t.steps, "samples", text)
        result["sample"] = text
        _log(run, f"sample:\n{text}")
    writer.close()
    return result
