"""Where a fine-tuning backbone comes from, what its architecture is, and loading it.

``finetune.backbone`` is a pretraining (or fine-tuning) run directory, its ``checkpoints``
directory or one checkpoint step, a ``jaxlm export`` directory, a Hugging Face model
directory (``config.json`` + safetensors, read directly), or ``none``. The model
architecture and the tokenizer are the backbone's; only runtime model settings (dropout,
attention kernel, dtype, remat) may be changed from the command line. Loading reads the
``backbone`` subtree of the saved parameters straight into the sharded train state; the
pretraining head stays on disk, and the fresh task head keeps its initialisation — except a
BERT pooler, which a Hugging Face checkpoint (or its conversion) brings along when
``finetune.pooler=true``, and a span head, which a fine-tuned Hugging Face
``BertForQuestionAnswering`` (its ``qa_outputs``) brings along to ``finetune.problem=span``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxlm.checkpoint.checkpointer import abstract_like
from jaxlm.checkpoint.export import load_params
from jaxlm.checkpoint.pretrained import (
    ARCH_EXEMPT,
    Pretrained,
    pretrained_model_config,
    resolve_pretrained,
    saved_shapes,
)
from jaxlm.config import Config, LoraConfig, ModelConfig
from jaxlm.models.lora import is_adapter
from jaxlm.models.trainable import Trainable, join, split

BackboneSource = Pretrained  # a resolved finetune.backbone
SETTING = "finetune.backbone"
POOLER = "head/pooler/"
SPAN_HEAD = "head/classifier/"  # a span head's start/end layer (HF: qa_outputs)
ADAPTERS = Trainable(is_adapter)  # split(params, ADAPTERS) = (adapters, the rest)
__all__ = ["ARCH_EXEMPT", "BackboneSource", "backbone_model_config", "head_report",
           "load_backbone", "resolve_backbone"]


def resolve_backbone(cfg: Config) -> BackboneSource:
    """Find the backbone ``finetune.backbone`` names; one-line errors for anything else."""
    spec = cfg.finetune.backbone
    if spec == "none":
        return BackboneSource("none", None, None, cfg.to_dict(), cfg.data.tokenizer)
    hint = "run `jaxlm train` first to pretrain one, or " if spec == "runs/default" else ""
    return resolve_pretrained(spec, SETTING, hint,
                              more=", or to 'none' for a randomly initialised model")


def backbone_model_config(source: BackboneSource, cfg: Config) -> ModelConfig:
    """The backbone's architecture with this run's runtime settings (dropout, attention,
    dtype, remat). Architecture settings asked for here that differ from the backbone's are
    an error naming them."""
    return pretrained_model_config(source, cfg, SETTING)


def load_backbone(source: BackboneSource, params: Any, shardings: Any,
                  pooler: bool = False, span: bool = False) -> tuple[Any, str]:
    """``params`` (the model's, arrays or shapes) with the saved backbone placed as
    ``shardings`` say —
    and the saved BERT pooler when ``pooler``, the saved span head when ``span``, where the
    source has one of the same shape — and the one-screen report of what was loaded and
    what was left out."""
    params = {**params, "backbone": load_base(source, params["backbone"],
                                              shardings["backbone"], subtree="backbone")}
    saved = saved_shapes(source)
    n = sum(int(np.prod(s)) for k, s in saved.items() if k.startswith("backbone/"))
    tensors = sum(1 for k in saved if k.startswith("backbone/"))
    lines = [f"loaded  backbone: {tensors} tensors, {n / 1e6:.2f}M params from "
             f"{source.describe()}"]
    loaded: tuple[str, ...] = ("backbone/",)
    for part, wanted, why in ((POOLER, pooler, "finetune.pooler=true"),
                              (SPAN_HEAD, span and source.kind == "hf", "finetune.problem=span")):
        name = part[:-1].split("/")[-1]
        if not wanted or source.kind == "checkpoint" or name not in params["head"]:
            continue
        fresh = {f"{part}{k}": v.size for k, v in params["head"][name].items()}
        if any(k not in saved or int(np.prod(saved[k])) != n for k, n in fresh.items()):
            continue  # not there, or of another size: keep the fresh head
        target = abstract_like(params["head"][name], shardings["head"][name])
        head = {**params["head"], name: load_params(source.path, target, subtree=part[:-1])}
        params = {**params, "head": head}
        loaded += (part,)
        lines.append(f"loaded  {part[:-1]} ({why}) from the backbone")
    unused = sorted(k for k in saved if not k.startswith(loaded))
    if unused:
        listed = ", ".join(f"{k} {saved[k]}" for k in unused[:6])
        more = f" and {len(unused) - 6} more" if len(unused) > 6 else ""
        lines.append(f"dropped pretraining head: {listed}{more}")
    lines.append(head_report(params, skip=loaded))
    return params, "\n".join(lines)


def load_base(source: BackboneSource, params: Any, shardings: Any,
              subtree: str | None = None) -> Any:
    """``params`` with every weight but the LoRA adapters read from ``source`` (its
    ``subtree``), placed as ``shardings`` say; the adapters keep their initialisation."""
    adapters, base = split(params, ADAPTERS)
    target = abstract_like(base, split(shardings, ADAPTERS)[1])
    return join(adapters, load_params(source.path, target, step=source.step, subtree=subtree))


def adapter_report(params: Any, lora: LoraConfig) -> str | None:
    """One line on the fresh LoRA adapters (None without LoRA)."""
    adapters = split(params, ADAPTERS)[0]
    leaves = jax.tree.leaves(adapters)
    if not leaves:
        return None
    n, total = sum(int(x.size) for x in leaves), sum(int(x.size) for x in jax.tree.leaves(params))
    return (f"initialised LoRA adapters: {len(leaves) // 2} layers, rank {lora.rank}, alpha "
            f"{lora.alpha:g}, {n / 1e6:.3f}M params ({100 * n / total:.2f}% of the model)")


def head_report(params: Any, skip: str | tuple[str, ...] = "backbone/") -> str:
    """The freshly initialised (head) parameters, one line; ``skip``: loaded path prefixes."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = ((jax.tree_util.keystr(kp, simple=True, separator="/"), x) for kp, x in leaves)
    names = ", ".join(f"{k} {tuple(x.shape)}" for k, x in paths if not k.startswith(skip))
    return f"initialised head: {names}"
