"""Where a model to generate from comes from, and where its parameters are placed.

:func:`load_source` is the one place that turns a user's path into a model config, its
parameters on a mesh and its tokenizer. It understands a jaxlm run directory (its latest
checkpoint), its ``checkpoints`` directory or one checkpoint step directory, and a
``jaxlm export`` directory (``model.safetensors``, ``config.json``, ``tokenizer.json``), and a
Hugging Face model directory — resolved by
:func:`jaxlm.checkpoint.pretrained.resolve_pretrained`, like every other place that takes
starting weights.

The mesh: the run's ``fsdp`` and ``tensor`` sizes with ``data`` over the rest of the local
devices when they fit, else every local device data-parallel (the saved mesh may have had
other devices), or the mesh the caller asks for.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxlm.checkpoint.export import load_params
from jaxlm.checkpoint.pretrained import resolve_pretrained
from jaxlm.config import Config, ConfigError, MeshConfig, ModelConfig, from_dict
from jaxlm.data.tokenizer import load_tokenizer, special_ids
from jaxlm.generate.sampling import GenerationError
from jaxlm.runtime.hardware import resolve_auto
from jaxlm.sharding import Rules, logical_rules, make_mesh
from jaxlm.tasks import CausalLM
from jaxlm.train.state import abstract_params

KINDS = ("a jaxlm run directory, a checkpoint step directory, a `jaxlm export` directory or a "
         "Hugging Face model directory")
FINETUNE_LABELS = "labels.json"  # jaxlm.finetune.run.LABELS_FILE: marks a fine-tuned run


@dataclasses.dataclass
class LoadedModel:
    """A model ready for :class:`~jaxlm.generate.Generator`: parameters on ``mesh``."""

    cfg: ModelConfig
    params: Any
    tokenizer: Any  # tokenizers.Tokenizer
    mesh: Mesh
    rules: Rules
    bos_id: int | None  # put before every prompt (jaxlm: the end-of-text token)
    eos_id: int | None  # generation stops here


def check_can_generate(cfg: ModelConfig) -> None:
    """One-line error for a model that cannot continue text (an encoder)."""
    if not cfg.causal:
        raise GenerationError(f"model.family={cfg.family} is an encoder (model.causal=false): "
                              "it cannot generate text; use a decoder run (gpt2, llama)")


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: Rules) -> Any:
    """The decoder LM's parameters as ShapeDtypeStructs with their shardings on ``mesh``
    (nothing is allocated): the target to load or place parameters into."""
    return abstract_params(CausalLM(cfg), mesh, rules)


def place_params(cfg: ModelConfig, params: Any, mesh: Mesh, rules: Rules) -> Any:
    """Host (or single-device) parameters onto ``mesh``, sharded as the model names them."""
    target = param_shardings(cfg, mesh, rules)
    return jax.tree.map(lambda x, t: jax.device_put(jnp.asarray(x, t.dtype), t.sharding),
                        params, target)


def inference_mesh(cfg: Config, mesh: MeshConfig | None = None) -> tuple[Mesh, Rules]:
    """The mesh to generate on, over the local devices (see the module docstring)."""
    n = jax.local_device_count()
    local = {"dcn_data": 1, "dcn_fsdp": 1, "dcn_tensor": 1}
    saved = cfg.mesh.model_copy(update=local)
    if -1 not in (saved.fsdp, saved.tensor):  # the run's fsdp/tensor, data over the rest
        saved = saved.model_copy(update={"data": -1})
    candidates = [mesh.model_copy(update=local)] if mesh is not None else [
        saved, cfg.mesh.model_copy(update={"data": -1, "fsdp": 1, "tensor": 1, **local})]
    for i, m in enumerate(candidates):
        sized = cfg.model_copy(update={"mesh": m, "train": cfg.train.model_copy(
            update={"global_batch": n, "grad_accum": 1})})
        try:
            return make_mesh(sized, jax.local_devices()), logical_rules(m)
        except ConfigError:
            if i == len(candidates) - 1:
                raise
    raise AssertionError("unreachable")


def with_dtype(model: ModelConfig, dtype: str | None) -> ModelConfig:
    """``model`` computing in ``dtype`` (``auto``, ``float32``, ``bfloat16``; None: as saved).
    A recorded cuDNN attention is chosen again for it (cuDNN's fused kernel runs only in
    half precision)."""
    if dtype is None or dtype == model.dtype:
        return model
    update = {"dtype": dtype} | ({"attention": "auto"} if model.attention == "cudnn" else {})
    return model.model_copy(update=update)


def load_source(source: str | Path, mesh: MeshConfig | None = None,
                step: int | None = None, dtype: str | None = None) -> LoadedModel:
    """Resolve ``source`` (see the module docstring; ``step``: a checkpoint of a run, default
    the latest) to its model config, its parameters placed on the generation mesh, and its
    tokenizer. ``dtype`` replaces the saved compute dtype (``model.dtype``; e.g.
    ``float32`` where ``auto`` would compute in bf16). One-line errors for anything else."""
    path = Path(source)
    if not path.exists():
        raise GenerationError(f"{source} does not exist: give {KINDS}")
    if (path / FINETUNE_LABELS).is_file():
        raise GenerationError(f"{path} is a fine-tuned classifier run: it has no language-model "
                              "head to generate with; give the pretraining run it started from")
    found = resolve_pretrained(str(path), "jaxlm generate SOURCE", step=step)
    cfg = from_dict(found.config)
    model = resolve_auto(with_dtype(cfg.model, dtype))  # (runs and exports that saved auto)
    cfg = cfg.model_copy(update={"model": model})
    check_can_generate(cfg.model)
    tokenizer = load_tokenizer(found.tokenizer)
    device_mesh, rules = inference_mesh(cfg, mesh)
    params = load_params(found.path, param_shardings(cfg.model, device_mesh, rules),
                         step=found.step)
    ids = special_ids(tokenizer)
    return LoadedModel(cfg.model, params, tokenizer, device_mesh, rules, ids.bos, ids.eos)
