"""Where a fine-tuning backbone comes from, what its architecture is, and loading it.

``finetune.backbone`` is a pretraining (or fine-tuning) run directory, its ``checkpoints``
directory or one checkpoint step, a ``jaxlm export`` directory, or ``none``. The model
architecture and the tokenizer are the backbone's; only runtime model settings (dropout,
attention kernel, dtype, remat) may be changed from the command line. Loading reads the
``backbone`` subtree of the saved parameters straight into the sharded train state; the
pretraining head stays on disk, and the fresh task head keeps its initialisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.checkpoint_compat import RUNTIME_MODEL_FIELDS, CheckpointError, flat_shapes, locate
from jaxlm.config import Config, ModelConfig
from jaxlm.export import WEIGHTS, is_export, load_params

ARCH_EXEMPT = RUNTIME_MODEL_FIELDS  # model.* settings a fine-tuning run may change


@dataclass
class BackboneSource:
    """A resolved ``finetune.backbone``: where, which step, its run config and tokenizer."""

    kind: str  # "checkpoint" | "export" | "none"
    path: Path | None
    step: int | None
    config: dict[str, Any]  # the run config saved with it
    tokenizer: str  # what load_tokenizer() takes

    def describe(self) -> str:
        if self.kind == "none":
            return "none (random initialisation)"
        return f"{self.path}" + (f" (step {self.step})" if self.step is not None else "")


def _checkpoint_config(directory: Path, step: int | None) -> tuple[int, dict[str, Any]]:
    import orbax.checkpoint as ocp

    from jaxlm.checkpoint import open_manager

    manager = open_manager(directory)
    steps = manager.all_steps()
    if not steps or (step is not None and step not in steps):
        raise CheckpointError(f"finetune.backbone: no complete checkpoint"
                              f"{'' if step is None else f' of step {step}'} in {directory}")
    step = max(steps) if step is None else step
    config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
    manager.close()
    return step, config


def resolve_backbone(cfg: Config) -> BackboneSource:
    """Find the backbone ``finetune.backbone`` names; one-line errors for anything else."""
    spec = cfg.finetune.backbone
    if spec == "none":
        return BackboneSource("none", None, None, cfg.to_dict(), cfg.data.tokenizer)
    path = Path(spec)
    if not path.exists():
        hint = ("run `jaxlm train` first to pretrain one, or " if spec == "runs/default" else "")
        raise CheckpointError(f"finetune.backbone={spec}: no such directory; {hint}set "
                              "finetune.backbone to a run, checkpoint or `jaxlm export` "
                              "directory, or to 'none' for a randomly initialised model")
    if is_export(path):
        directory = path if path.is_dir() else path.parent
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"finetune.backbone={spec}: the export has no config.json")
        config = json.loads(config_file.read_text())
        tok = directory / "tokenizer.json"
        tokenizer = str(tok) if tok.is_file() else config.get("data", {}).get("tokenizer",
                                                                              "default")
        return BackboneSource("export", directory, None, config, tokenizer)
    try:
        directory, step = locate(path)
    except CheckpointError:
        raise CheckpointError(f"finetune.backbone={spec} is not a run directory, a checkpoint "
                              f"step directory or a `jaxlm export` directory (with {WEIGHTS})"
                              ) from None
    step, config = _checkpoint_config(directory, step)
    return BackboneSource("checkpoint", directory, step, config,
                          config.get("data", {}).get("tokenizer", "default"))


def backbone_model_config(source: BackboneSource, cfg: Config) -> ModelConfig:
    """The backbone's architecture with this run's runtime settings (dropout, attention,
    dtype, remat). Architecture settings asked for here that differ from the backbone's are
    an error naming them."""
    if source.kind == "none":
        return cfg.model
    saved = ModelConfig(**source.config["model"])
    default, asked = ModelConfig().model_dump(), cfg.model.model_dump()
    if asked.get("family") != default["family"]:  # a family given: compare its resolved flags
        default = ModelConfig(family=asked["family"]).model_dump()
    wanted = {k: v for k, v in asked.items() if v != default[k] and k not in ARCH_EXEMPT}
    differ = {k: v for k, v in wanted.items() if saved.model_dump()[k] != v}
    if differ:
        keys = ", ".join(f"model.{k}={v!r} (backbone: {saved.model_dump()[k]!r})"
                         for k, v in differ.items())
        raise CheckpointError(f"the backbone {source.describe()} does not match the model asked "
                              f"for: {keys}; the architecture comes from finetune.backbone, so "
                              "drop these model.* settings")
    runtime = {k: asked[k] for k in ARCH_EXEMPT if asked[k] != default[k]}
    return saved.model_copy(update=runtime)


def _saved_shapes(source: BackboneSource) -> dict[str, tuple[int, ...]]:
    """Every saved parameter's path and shape (metadata only)."""
    if source.kind == "export":
        from safetensors import safe_open

        with safe_open(str(source.path / WEIGHTS), "np") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    from jaxlm.checkpoint import open_manager

    manager = open_manager(source.path)
    meta = manager.item_metadata(source.step)["state"]
    manager.close()
    return flat_shapes(getattr(meta, "tree", meta).get("params"))


def load_backbone(source: BackboneSource, abstract_backbone: Any) -> tuple[Any, str]:
    """The saved backbone placed as ``abstract_backbone`` says, and the one-screen report of
    what was loaded and what was left out."""
    params = load_params(source.path, abstract_backbone, step=source.step, subtree="backbone")
    saved = _saved_shapes(source)
    n = sum(int(np.prod(s)) for k, s in saved.items() if k.startswith("backbone/"))
    tensors = sum(1 for k in saved if k.startswith("backbone/"))
    unused = sorted(k for k in saved if not k.startswith("backbone/"))
    lines = [f"loaded  backbone: {tensors} tensors, {n / 1e6:.2f}M params from "
             f"{source.describe()}"]
    if unused:
        listed = ", ".join(f"{k} {saved[k]}" for k in unused[:6])
        more = f" and {len(unused) - 6} more" if len(unused) > 6 else ""
        lines.append(f"dropped pretraining head: {listed}{more}")
    return params, "\n".join(lines)


def head_report(params: Any) -> str:
    """The freshly initialised (head) parameters, one line."""
    head = {k: v for k, v in params.items() if k != "backbone"}
    leaves = jax.tree_util.tree_flatten_with_path(head)[0]
    names = ", ".join(f"{jax.tree_util.keystr(kp, simple=True, separator='/')} "
                      f"{tuple(x.shape)}" for kp, x in leaves)
    return f"initialised head: {names}"
