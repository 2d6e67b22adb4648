"""Where starting weights come from: a jaxlm run or checkpoint, an export, or Hugging Face.

Shared by ``finetune.backbone`` (a backbone under a fresh head) and ``model.init_from``
(continued pretraining). A path is resolved once into a :class:`Pretrained`: its kind, the
run config saved with it (for a Hugging Face directory, jaxlm's translation of its
``config.json``) and its tokenizer. The architecture of the run is the source's; only
runtime model settings (dropout, attention kernel, dtype, remat) may be changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxlm.checkpoint.compat import RUNTIME_MODEL_FIELDS, CheckpointError, flat_shapes, locate
from jaxlm.checkpoint.export import WEIGHTS, is_export
from jaxlm.checkpoint.reader import SavedRun, tokenizer_name
from jaxlm.config import Config, ModelConfig
from jaxlm.hf import hf_model_config, is_hf_dir, read_config
from jaxlm.hf.checkpoint import run_config
from jaxlm.hf.load import hf_shapes
from jaxlm.hf.peft import base_of, is_peft_dir

ARCH_EXEMPT = RUNTIME_MODEL_FIELDS  # model.* settings a run may change from its source's
HARDWARE_FIELDS = ("dtype", "attention")  # the machine's choice: always the new run's own


@dataclass
class Pretrained:
    """A resolved source of weights: where, which step, its run config and tokenizer."""

    kind: str  # "checkpoint" | "export" | "hf" | "none"
    path: Path | None
    step: int | None
    config: dict[str, Any]  # the run config saved with it (translated for "hf")
    tokenizer: str  # what load_tokenizer() takes

    def describe(self) -> str:
        if self.kind == "none":
            return "none (random initialisation)"
        what = " (Hugging Face)" if self.kind == "hf" else ""
        return f"{self.path}{what}" + (f" (step {self.step})" if self.step is not None else "")


def hf_source(path: Path) -> Pretrained:
    """A Hugging Face model directory as a source: its config translated, its tokenizer."""

    tokenizer = str(base_of(path) if is_peft_dir(path) else path)  # (an adapter has none)
    config = run_config(hf_model_config(read_config(path)), tokenizer)
    return Pretrained("hf", path, None, config, tokenizer)


def resolve_pretrained(spec: str, setting: str, hint: str = "", more: str = "",
                       step: int | None = None) -> Pretrained:
    """Find what ``setting=spec`` names; one-line errors for anything else. When the path
    does not exist, ``hint`` goes before the list of what the setting accepts, ``more`` after
    it. ``step`` picks a checkpoint of a run (default: the latest, or the step directory
    given)."""

    path = Path(spec)
    accepted = "a run, checkpoint, `jaxlm export` or Hugging Face model directory"
    if not path.exists():
        raise CheckpointError(f"{setting}={spec}: no such directory; {hint}set {setting} to "
                              f"{accepted}{more}")
    if step is not None and (is_hf_dir(path) or is_export(path)):
        raise CheckpointError(f"--step {step}: {spec} is not a run directory (an export or a "
                              "Hugging Face directory holds one set of weights)")
    if is_hf_dir(path):
        return hf_source(path)
    if is_export(path):
        directory = path if path.is_dir() else path.parent
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{setting}={spec}: the export has no config.json")
        config = json.loads(config_file.read_text())
        tok = directory / "tokenizer.json"
        tokenizer = str(tok) if tok.is_file() else tokenizer_name(config)
        return Pretrained("export", directory, None, config, tokenizer)
    try:
        directory, named = locate(path)
    except CheckpointError:
        raise CheckpointError(f"{setting}={spec} is not a run directory, a checkpoint step "
                              f"directory or a `jaxlm export` directory (with {WEIGHTS}), nor "
                              "a Hugging Face model directory (config.json with a model_type)"
                              ) from None
    if step is not None and named is not None and named != step:
        raise CheckpointError(f"--step {step} differs from the step directory {spec} (step "
                              f"{named}); give the run directory with --step, or the step alone")
    with SavedRun(directory) as run:
        step = run.step(named if step is None else step, setting)
        config = run.config(step)
    return Pretrained("checkpoint", directory, step, config, tokenizer_name(config))


def pretrained_model_config(source: Pretrained, cfg: Config, setting: str) -> ModelConfig:
    """The source's architecture with this run's runtime settings (dropout, attention,
    dtype, remat; dtype and attention always this run's, ``auto`` by default, since the
    source's were chosen for the machine that trained it). Architecture settings asked for
    here that differ from the source's are an error naming them."""
    if source.kind == "none":
        return cfg.model
    saved = ModelConfig(**source.config["model"])
    default, asked = ModelConfig().model_dump(), cfg.model.model_dump()
    if asked.get("family") != default["family"]:  # a family given: compare its resolved flags
        default = ModelConfig(family=asked["family"]).model_dump()
    wanted = {k: v for k, v in asked.items() if v != default[k] and k not in ARCH_EXEMPT}
    differ = {k: v for k, v in wanted.items() if saved.model_dump()[k] != v}
    if differ:
        label = setting.split(".")[-1]  # "backbone", "init_from"
        keys = ", ".join(f"model.{k}={v!r} ({label}: {saved.model_dump()[k]!r})"
                         for k, v in differ.items())
        raise CheckpointError(f"{source.describe()} does not match the model asked for: {keys}; "
                              f"the architecture comes from {setting}, so drop these model.* "
                              "settings")
    runtime = {k: asked[k] for k in ARCH_EXEMPT if asked[k] != default[k] or k in HARDWARE_FIELDS}
    return saved.model_copy(update={"init_from": None, **runtime})


def saved_shapes(source: Pretrained) -> dict[str, tuple[int, ...]]:
    """Every saved parameter's path and shape (metadata only); for a Hugging Face
    directory, tensors jaxlm has no place for are listed under their HF names."""
    if source.kind == "hf":

        return hf_shapes(source.path)
    if source.kind == "export":
        from safetensors import safe_open

        with safe_open(str(source.path / WEIGHTS), "np") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118

    with SavedRun(source.path) as run:
        return flat_shapes(run.param_metadata(source.step))
