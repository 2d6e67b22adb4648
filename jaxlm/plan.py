"""``jaxlm plan``: will a config fit, and how fast could it go — before anything is allocated.

The train step of the config is lowered and compiled for a mesh of ``--devices`` simulated
devices (fake CPU devices in this process; nothing is allocated, parameters and optimizer
state stay abstract), and XLA's memory analysis of the compiled, SPMD-partitioned step gives
the bytes per device: parameters and optimizer state (from their shardings), and the step's
temporaries (activations, gradients). With the device's peak FLOP/s (the table in
:mod:`jaxlm.profiling`) and an assumed MFU it estimates the step time. When the step does not
fit ``--hbm-gib``, it tries the usual remedies in order of cost — shard parameters and
optimizer state over more devices (FSDP), split the batch into microbatches, rematerialise
activations — and proposes the first that fits.

The CPU compiler's fusion and buffer assignment are not the TPU's or GPU's, so the figures
are estimates (not yet checked against a real accelerator here); they answer "does it fit,
roughly, and what would make it fit".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxlm.config import Config
from jaxlm.data.mlm import head_positions
from jaxlm.errors import UserError
from jaxlm.models import flops_per_token, param_count
from jaxlm.profiling import memory_summary, table_peak_flops
from jaxlm.runtime.hardware import resolve_config
from jaxlm.sharding import activate, batch_sharding, logical_rules, make_mesh
from jaxlm.tasks import pretraining_task
from jaxlm.train.optim import lr_schedule, make_optimizer
from jaxlm.train.state import create_train_state
from jaxlm.train.step import jit_train_step, make_train_step

GIB = 2**30


def _size(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB // 8 else f"{b / 2**20:.1f} MiB"


@dataclasses.dataclass
class Estimate:
    """One compiled configuration: its changes from the config and bytes per device."""

    changes: list[str]
    params: int
    opt_state: int
    temps: int
    total: int


def _for_device(cfg: Config, device_kind: str) -> Config:
    """The config as it would run on ``device_kind``: bf16 compute on accelerators (``auto``
    would pick this CPU's dtype), and the attention ``auto`` picks there, as the XLA form the
    CPU compiler can lower; on a CPU, what a run here resolves ``auto`` to. (The fused loss's
    chunks follow this CPU's budget, 16 MiB of logits per device instead of an accelerator's
    256 MiB: a difference well under 1 GiB.)"""
    model = cfg.model
    update: dict[str, Any] = {}
    if device_kind.lower() != "cpu":
        if model.dtype == "auto":
            update["dtype"] = "bfloat16"
        if model.attention in ("auto", "cudnn"):
            update["attention"] = "dot_product"
    return resolve_config(cfg.model_copy(update={"model": model.model_copy(update=update)}))


def estimate(cfg: Config, changes: list[str]) -> Estimate:
    """Compile the train step on this process's devices and read its memory analysis."""
    mesh = make_mesh(cfg)
    rules = logical_rules(cfg.mesh)
    task, tx = pretraining_task(cfg), make_optimizer(cfg.train)
    state, shardings = create_train_state(task, tx, mesh, rules, 0, abstract=True)
    bs = batch_sharding(mesh, rules)
    shape = (cfg.train.global_batch, cfg.data.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "weights" else jnp.int32,
                                     sharding=bs)
             for k in ("inputs", "targets", "segment_ids", "positions", "weights")}
    step = jit_train_step(make_train_step(task, tx, lr_schedule(cfg.train),
                                          cfg.train.grad_accum), shardings, bs, mesh, rules)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         state, shardings)
    with activate(mesh, rules):
        compiled = step.jitted.lower(state, batch).compile()
    mem = memory_summary(compiled, state.params, state.opt_state)
    return Estimate(changes, mem.params, mem.opt_state, mem.temps, mem.total)


# ---------------------------------------------------------------------------- fine-tuning


def finetune_estimate(cfg: Config, device_kind: str) -> tuple[Estimate, Any]:
    """Compile a fine-tuning run's train step (its backbone's architecture, ``finetune.*``
    batch, length and LoRA; no data read, nothing loaded) and read its memory analysis:
    (estimate, the run)."""
    from jaxlm.finetune.run import backbone_of, build_run, task_for

    backbone = backbone_of(cfg)
    if device_kind.lower() != "cpu":  # as _for_device: bf16 on accelerators
        model = backbone.model.model_copy(update={
            "dtype": "bfloat16" if cfg.model.dtype == "auto" else backbone.model.dtype,
            "attention": "dot_product"})
        backbone = dataclasses.replace(backbone, model=model)
    f = cfg.finetune
    task = task_for(f, backbone.model, f.num_labels or 2)
    run = build_run(cfg, backbone, task, total=1)
    dummy = task.dummy_batch(f.batch_size, backbone.max_length)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=run.batch_sharding)
             for k, v in dummy.items()}
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         run.state, run.shardings)
    with activate(run.mesh, run.rules):
        compiled = run.train_step.jitted.lower(state, batch).compile()
    mem = memory_summary(compiled, state.params, state.opt_state)
    return Estimate([], mem.params, mem.opt_state, mem.temps, mem.total), run


def _saved_bytes(run: Any) -> int:
    """Bytes one checkpoint of the run writes (all devices): trained parameters, optimizer
    state (the frozen backbone is not saved)."""
    from jaxlm.models.trainable import trained_part

    tree = (trained_part(run.state.params, run.trainable), run.state.opt_state)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def finetune_plan(cfg: Config, device_kind: str) -> str:
    """The report of ``jaxlm plan`` on a fine-tuning config: per device memory of the run as
    configured and of the other choice (LoRA rank 8 on attention, or full fine-tuning), so
    what LoRA saves is on screen."""
    from jaxlm.config import LoraConfig
    from jaxlm.models.trainable import count

    f = cfg.finetune
    other = LoraConfig() if f.lora.rank else LoraConfig(rank=8)
    alt = cfg.model_copy(update={"finetune": f.model_copy(update={"lora": other})})
    rows = []
    for c in (cfg, alt):
        est, run = finetune_estimate(c, device_kind)
        trained, total = count(run.state.params, run.trainable)
        lora = c.finetune.lora
        what = (f"LoRA rank {lora.rank} on {', '.join(lora.targets)}" if lora.rank else
                "full fine-tuning" if not c.finetune.freeze_backbone else "frozen backbone")
        rows.append(f"{what}: trains {trained / 1e6:,.3f}M of {total / 1e6:,.2f}M params "
                    f"({100 * trained / total:.2f}%); " + _format(est, "per device")
                    + f"; checkpoint {_size(_saved_bytes(run))} per save")
    model = run.cfg.model
    head = (f"finetune: {f.problem} on a {model.family} backbone ({f.backbone}); "
            f"{f.batch_size} x {run.cfg.finetune.max_length} tokens per step; "
            f"{jax.device_count()} x {device_kind}, mesh {dict(run.mesh.shape)}; "
            f"{model.dtype} compute")
    return "\n".join([head, rows[0], "compare " + rows[1]])


def _with(cfg: Config, section: str, **values: Any) -> Config:
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=values)})


def remedies(cfg: Config, devices: int) -> list[tuple[list[str], Config]]:
    """Changes to try, cheapest first: shard parameters and optimizer state over all devices
    (FSDP: no extra compute), then more microbatches (a little less efficiency each), then
    full rematerialisation (about a third more compute) with microbatches again."""
    out: list[tuple[list[str], Config]] = []
    m, t = cfg.mesh, cfg.train
    tensor = m.tensor if m.tensor != -1 else 1
    fsdp_max = devices // tensor
    base, fs = cfg, []
    if m.fsdp != -1 and m.fsdp < fsdp_max:
        fs = [f"mesh.data=1 mesh.fsdp={fsdp_max}"]
        base = _with(cfg, "mesh", data=1, fsdp=-1)
        out.append((fs, base))
    dp = devices // tensor

    def accumulate(start: Config, prefix: list[str]) -> None:
        accum, micro = t.grad_accum, t.global_batch // t.grad_accum
        while micro % 2 == 0 and (micro // 2) % dp == 0:
            accum, micro = accum * 2, micro // 2
            out.append(([*prefix, f"train.grad_accum={accum}"],
                        _with(start, "train", grad_accum=accum)))

    accumulate(base, fs)
    if cfg.model.remat != "full":
        full = _with(base, "model", remat="full")
        out.append(([*fs, "model.remat=full"], full))
        accumulate(full, [*fs, "model.remat=full"])
    return out


def plan(cfg: Config, device_kind: str, hbm_gib: float | None, mfu: float) -> str:
    """The report ``jaxlm plan`` prints (see the module docstring)."""
    n = jax.device_count()
    cfg = _for_device(cfg, device_kind)
    first = estimate(cfg, [])
    tokens = cfg.train.global_batch * cfg.data.seq_len
    per_token = flops_per_token(cfg.model, cfg.data.seq_len,
                                head_positions=head_positions(cfg.data))
    flops = per_token * tokens
    peak = table_peak_flops(device_kind) if device_kind.lower() != "cpu" else None
    shape = dict(make_mesh(cfg).shape)
    lines = [f"{cfg.model.family} model, {param_count(cfg.model) / 1e6:,.1f}M params; "
             f"{cfg.train.global_batch} x {cfg.data.seq_len} tokens per step "
             f"(grad_accum {cfg.train.grad_accum}); {n} x {device_kind}, mesh {shape}; "
             f"{cfg.model.dtype} compute, remat {cfg.model.remat}, scan_layers "
             f"{cfg.model.scan_layers}",
             _format(first, "per device"),
             f"model FLOPs per step: {flops / 1e12:,.4g} TFLOP "
             f"({per_token / 1e9:.4g} GFLOP per token)"]
    if peak is not None:
        step_s = flops / (peak * n * mfu)
        lines.append(f"expected step time at {mfu:.0%} MFU: {step_s:.4g} s "
                     f"({tokens / step_s:,.0f} tokens/s; peak {peak / 1e12:.0f} TFLOP/s per "
                     "device)")
    else:
        lines.append(f"no peak FLOP/s known for '{device_kind}': give a --device-kind such as "
                     "'TPU v5e' or 'H100' for a step time")
    if hbm_gib is None:
        return "\n".join(lines)
    budget = hbm_gib * GIB
    if first.total <= budget:
        lines.append(f"fits: {_size(first.total)} of {hbm_gib:g} GiB per device")
        return "\n".join(lines)
    lines.append(f"does not fit: {_size(first.total)} needed per device, "
                 f"{hbm_gib:g} GiB available")
    for changes, candidate in remedies(cfg, n):
        try:
            est = estimate(candidate, changes)
        except UserError:
            continue
        lines.append("  try " + " ".join(changes) + f": {_size(est.total)}")
        if est.total <= budget:
            lines.append(f"smallest change that fits: {' '.join(changes)} "
                         f"({_size(est.total)} of {hbm_gib:g} GiB per device)")
            return "\n".join(lines)
    lines.append("nothing tried fits: use more devices or a smaller model / batch / sequence")
    return "\n".join(lines)


def _format(e: Estimate, what: str) -> str:
    return (f"{what}: parameters {_size(e.params)}, optimizer state {_size(e.opt_state)}, "
            f"activations and other temporaries {_size(e.temps)}; step total "
            f"~{_size(e.total)}")
