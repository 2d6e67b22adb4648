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

from jaxlm.checkpoint import Checkpointer
from jaxlm.config import Config
from jaxlm.data.pipeline import build_pipeline, check_vocab, to_global
from jaxlm.data.tokenizer import load_tokenizer, special_ids
from jaxlm.distributed import start as start_process
from jaxlm.errors import TrainingError
from jaxlm.generate import sample
from jaxlm.metrics import MetricsWriter, progress_postfix
from jaxlm.models import param_count
from jaxlm.models.layers import resolve_dtype
from jaxlm.preemption import PreemptionWatcher
from jaxlm.profiling import (
    StepProfiler,
    device_memory,
    memory_summary,
    peak_flops_per_device,
    throughput,
)
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
    step_fn = make_train_step(task, tx, schedule, cfg.train.grad_accum)
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


def generate_sample(run: Run, prompt: str, n_tokens: int) -> str:
    ids = special_ids(run.tokenizer)
    prompt_ids = ([ids.eos] if ids.eos is not None else []) + run.tokenizer.encode(prompt).ids
    new = sample(run.task.model, run.state.params, prompt_ids, n_tokens, seed=run.cfg.train.seed,
                 eos_id=ids.eos)
    return prompt + run.tokenizer.decode(new)


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
    """Pretrain per ``cfg``; returns the final metrics (train loss, eval loss, perplexity)."""
    cfg, source = apply_init_from(cfg)  # model.init_from: its architecture and tokenizer
    t = cfg.train
    run_dir = Path(t.run_dir)
    profiler = StepProfiler(t.profile_steps, run_dir / "profile", t.steps)  # checks the steps
    run = setup(cfg, init=False)
    ckpt = Checkpointer(cfg, run.tokenizer, log=lambda msg: _log(run, msg))
    run.state, data_state = ckpt.restore(run.state, run.shardings)  # checkpoint.resume
    if is_abstract(run.state):  # nothing to resume from: initialise
        run.state, _ = create_train_state(run.task, run.tx, run.mesh, run.rules, t.seed)
        if source is not None:  # and load model.init_from's weights
            params, report = load_init_from(source, run.state.params, run.shardings.params)
            run.state = run.state.replace(params=params)
            _log(run, report)
    writer = MetricsWriter(run_dir, enabled=run.primary, tensorboard=cfg.logging.tensorboard,
                           jsonl=cfg.logging.jsonl, flush_secs=cfg.logging.flush_secs)
    peak_flops = peak_flops_per_device(cfg.logging.peak_tflops)  # measured once on CPU
    writer.config(cfg.to_dict())
    if run.primary:
        (run_dir / "config.json").write_text(cfg.to_json())
    n_params = param_count(cfg.model)
    dtype = resolve_dtype(cfg.model).dtype
    _log(run, f"jaxlm: {cfg.model.family} model, {n_params / 1e6:.2f}M params, {dtype} compute, "
              "mesh "
              f"{dict(run.mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} "
              f"device(s), {t.steps} steps of {t.global_batch}x{cfg.data.seq_len} tokens")

    pipe = build_pipeline(cfg.data, "train", run.local_batch, jax.process_index(),
                          jax.process_count())
    ckpt.load_data_state(pipe, data_state)
    preemption = PreemptionWatcher()  # SIGTERM: save after this step and exit
    samples = t.sample_tokens > 0 and cfg.model.causal  # an encoder does not generate text
    start = int(run.state.step)
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
            if done % t.log_every == 0 or done == t.steps or step == start:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not np.isfinite(last["loss"]):
                    raise TrainingError(
                        f"loss is {last['loss']} at step {done} (lr {last['lr']:.3g}); lower "
                        f"train.lr, set train.clip_norm, or use model.dtype=float32")
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
            preempted = preemption.reached(done)
            if (preempted or ckpt.due(done)) and ckpt.save(done, run.state, pipe.state_dict(),
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
