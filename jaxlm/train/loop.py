"""The pretraining loop, as plain code: set up, then step / log / eval / checkpoint.

``train(cfg)`` is what ``jaxlm train`` runs. Everything sharded is created through the mesh
and logical rules of ``jaxlm.sharding``; data arrives per host and is assembled into global
arrays; only process 0 prints and writes metrics.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from jaxlm.config import Config
from jaxlm.data.pipeline import build_pipeline, check_vocab, to_global
from jaxlm.data.tokenizer import load_tokenizer, special_ids
from jaxlm.errors import TrainingError
from jaxlm.generate import sample
from jaxlm.metrics import MetricsWriter
from jaxlm.models import DecoderLM, flops_per_token, param_count
from jaxlm.sharding import Rules, batch_sharding, logical_rules, make_mesh
from jaxlm.train.optim import lr_schedule, make_optimizer
from jaxlm.train.state import TrainState, create_train_state
from jaxlm.train.step import jit_train_step, make_eval_step, make_train_step


@dataclasses.dataclass
class Run:
    """Everything a training run is made of, built once by :func:`setup`."""

    cfg: Config
    mesh: Mesh
    rules: Rules
    model: DecoderLM
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


def setup(cfg: Config) -> Run:
    """Mesh, tokenizer, model, optimizer and sharded state; config errors surface here first."""
    mesh = make_mesh(cfg)  # checks the mesh and batch against the device count
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    check_vocab(tokenizer, cfg.model.vocab_size)
    rules = logical_rules(cfg.mesh)
    model = DecoderLM(cfg.model)
    tx, schedule = make_optimizer(cfg.train), lr_schedule(cfg.train)
    state, shardings = create_train_state(model, tx, mesh, rules, cfg.data.seq_len, cfg.train.seed)
    bs = batch_sharding(mesh, rules)
    train_step = jit_train_step(make_train_step(cfg, model, tx, schedule), shardings, bs, mesh, rules)
    eval_step = make_eval_step(model, shardings, bs, mesh, rules)
    return Run(cfg, mesh, rules, model, tx, schedule, state, shardings, bs, train_step, eval_step,
               tokenizer)


def evaluate(run: Run) -> dict[str, float] | None:
    """Loss, perplexity and accuracy over the first ``train.eval_batches`` held-out batches."""
    if run.cfg.data.eval is None:
        return None
    pipe = build_pipeline(run.cfg.data, "eval", run.local_batch, jax.process_index(),
                          jax.process_count(), repeat=False)
    totals = {"nll": 0.0, "weight": 0.0, "correct": 0.0}
    try:
        for _, local in zip(range(run.cfg.train.eval_batches), pipe, strict=False):
            sums = run.eval_step(run.state.params, to_global(local, run.batch_sharding))
            for k in totals:
                totals[k] += float(sums[k])
    finally:
        pipe.close()
    if totals["weight"] == 0:
        return None
    loss = totals["nll"] / totals["weight"]
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "accuracy": totals["correct"] / totals["weight"], "tokens": totals["weight"]}


def generate_sample(run: Run, prompt: str, n_tokens: int) -> str:
    ids = special_ids(run.tokenizer)
    prompt_ids = ([ids.eos] if ids.eos is not None else []) + run.tokenizer.encode(prompt).ids
    new = sample(run.model, run.state.params, prompt_ids, n_tokens, seed=run.cfg.train.seed,
                 eos_id=ids.eos)
    return prompt + run.tokenizer.decode(new)


def _log(run: Run, msg: str) -> None:
    if run.primary:
        tqdm.write(msg)


def train(cfg: Config) -> dict[str, Any]:
    """Pretrain per ``cfg``; returns the final metrics (train loss, eval loss, perplexity)."""
    run = setup(cfg)
    t = cfg.train
    run_dir = Path(t.run_dir)
    writer = MetricsWriter(run_dir, enabled=run.primary, tensorboard=cfg.logging.tensorboard,
                           jsonl=cfg.logging.jsonl)
    writer.config(cfg.to_dict())
    if run.primary:
        (run_dir / "config.json").write_text(cfg.to_json())
    n_params = param_count(cfg.model)
    _log(run, f"jaxlm: {cfg.model.family} model, {n_params / 1e6:.2f}M params, mesh "
              f"{dict(run.mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} "
              f"device(s), {t.steps} steps of {t.global_batch}x{cfg.data.seq_len} tokens")

    pipe = build_pipeline(cfg.data, "train", run.local_batch, jax.process_index(),
                          jax.process_count())
    start = int(run.state.step)
    tokens_per_step = t.global_batch * cfg.data.seq_len
    flops_per_step = flops_per_token(cfg.model, cfg.data.seq_len) * tokens_per_step
    bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not (run.primary and cfg.logging.progress))
    last: dict[str, float] = {}
    first_loss: float | None = None
    window_start, window_steps = time.perf_counter(), 0
    try:
        for step in range(start, t.steps):
            batch = to_global(next(pipe), run.batch_sharding)
            run.state, metrics = run.train_step(run.state, batch)
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
                elapsed = time.perf_counter() - window_start
                step_time = elapsed / window_steps
                last["step_time"] = step_time
                last["tokens_per_sec"] = tokens_per_step / step_time
                last["tflops_per_device"] = flops_per_step / step_time / jax.device_count() / 1e12
                writer.scalars(done, last, prefix="train/")
                bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_sec']:,.0f}")
                window_start, window_steps = time.perf_counter(), 0
            if done % t.eval_every == 0 and done != t.steps:
                ev = evaluate(run)
                if ev:
                    writer.scalars(done, ev, prefix="eval/")
                    _log(run, f"step {done}: eval loss {ev['loss']:.4f}, "
                              f"perplexity {ev['perplexity']:.2f}")
                window_start, window_steps = time.perf_counter(), 0
    finally:
        bar.close()
        pipe.close()

    result: dict[str, Any] = {"first_loss": first_loss, "final_loss": last.get("loss"),
                              "steps": t.steps}
    ev = evaluate(run)
    if ev:
        writer.scalars(t.steps, ev, prefix="eval/")
        result.update(eval_loss=ev["loss"], perplexity=ev["perplexity"])
        _log(run, f"held-out loss {ev['loss']:.4f}, perplexity {ev['perplexity']:.2f}")
    if t.sample_tokens:  # every process runs the (sharded) forward; process 0 logs
        text = generate_sample(run, t.sample_prompt, t.sample_tokens)
        writer.text(t.steps, "sample", text)
        result["sample"] = text
        _log(run, f"sample:\n{text}")
    writer.close()
    return result
