"""Reading a Hugging Face model directory: ``config.json`` and safetensors weights.

A directory counts as Hugging Face's when its ``config.json`` has a ``model_type``. Weights
are ``model.safetensors`` or shards listed in ``model.safetensors.index.json``; pickled
PyTorch weights (``pytorch_model.bin``) are refused, never loaded: unpickling runs code.

:class:`HFCheckpoint` opens the files lazily (nothing is read until asked), names every
tensor as in the family's base model (``bert.encoder...`` → ``encoder...``) and checks the
names against the family's rules: a tensor that no rule, buffer or known-unused weight
explains is an error, so a checkpoint of another architecture is never half-loaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.config import Config, ModelConfig
from jaxlm.hf.bert import FAMILY as BERT
from jaxlm.hf.gpt2 import FAMILY as GPT2
from jaxlm.hf.llama import FAMILY as LLAMA
from jaxlm.hf.peft import MergedAdapter, base_of, is_peft_dir
from jaxlm.hf.spec import Family, HFError, Rule

FAMILIES: dict[str, Family] = {f.model_type: f for f in (GPT2, LLAMA, BERT)}
BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES.values()}
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
MAX_LISTED = 6
HEADS_TOP_LEVEL = ("lm_head/", "mlm_head/", "head/classifier/")  # outside HF's base model


def is_hf_dir(path: str | Path) -> bool:
    """A directory whose config.json has a ``model_type`` (jaxlm's own config has none), or
    a PEFT LoRA adapter directory (read as its base model with the adapter merged)."""
    if is_peft_dir(path):
        return True
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def read_config(path: str | Path) -> dict[str, Any]:
    """The model's config.json (a PEFT adapter's: its base model's)."""
    if is_peft_dir(path):
        path = base_of(path)
    file = Path(path) / "config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise HFError(f"cannot read {file}: {e}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise HFError(f"{file} has no model_type: not a Hugging Face model config")
    return config


def family_of(config: dict[str, Any]) -> Family:
    """The family of an HF config, refusing other model types and architectures."""
    kind = config["model_type"]
    if kind not in FAMILIES:
        raise HFError(f"config.json model_type={kind!r} is not supported; jaxlm converts "
                      f"{', '.join(FAMILIES)}")
    family = FAMILIES[kind]
    archs = config.get("architectures") or [family.base]
    bad = [a for a in archs if a not in family.architectures]
    if bad:
        raise HFError(f"config.json architectures={bad} is not supported for {kind}; jaxlm "
                      f"reads {', '.join(family.architectures)}")
    return family


def hf_model_config(config: dict[str, Any]) -> ModelConfig:
    """The jaxlm architecture of an HF ``config.json`` (exact sizes, eps and RoPE base)."""
    fields = family_of(config).config_from_hf(config)
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        raise HFError(f"config.json does not give a valid jaxlm model: {e}") from None


def run_config(model: ModelConfig, tokenizer: str) -> dict[str, Any]:
    """jaxlm's run-config form of an imported model: the defaults with this ``model``, its
    ``tokenizer`` and the objective it was trained with (masked LM for encoders)."""
    config = Config().to_dict()
    config["model"] = model.model_dump(mode="json")
    config["data"].update(tokenizer=tokenizer, mode="mlm" if model.is_encoder else "pack",
                          seq_len=min(config["data"]["seq_len"], model.max_seq_len))
    Config(**config)  # it must load as a run config
    return config


def _weight_files(path: Path) -> dict[str, str]:
    """``{tensor name as stored: file}`` of a single or sharded safetensors checkpoint."""
    if (path / INDEX).is_file():
        weight_map = json.loads((path / INDEX).read_text()).get("weight_map", {})
        return {name: str(path / file) for name, file in weight_map.items()}
    if (path / WEIGHTS).is_file():
        from safetensors import safe_open

        with safe_open(str(path / WEIGHTS), "np") as f:
            return dict.fromkeys(f.keys(), str(path / WEIGHTS))
    pickled = [p for p in PICKLED if (path / p).is_file()] or sorted(
        p.name for p in path.glob("pytorch_model-*.bin"))
    if pickled:
        raise HFError(f"{path} holds only pickled PyTorch weights ({pickled[0]}); jaxlm never "
                      "loads pickle, which can run arbitrary code. Save the model as "
                      "safetensors first (transformers: model.save_pretrained(dir), the default)")
    others = [p.name for p in path.iterdir() if p.suffix in (".h5", ".msgpack", ".pt", ".ckpt")]
    found = f" (found {', '.join(sorted(others))})" if others else ""
    raise HFError(f"{path} has no {WEIGHTS} or {INDEX}{found}; jaxlm reads safetensors weights")


def canonical(name: str, prefix: str) -> str:
    """A stored tensor name as in the base model: no task-model prefix, LayerNorm
    ``gamma``/``beta`` as ``weight``/``bias`` (what transformers does for old checkpoints)."""
    if name.startswith(prefix + "."):
        name = name[len(prefix) + 1 :]
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))


class HFCheckpoint:
    """An HF model directory opened for reading, tensor by tensor.

    ``model``: its jaxlm ModelConfig; ``rules``: jaxlm path → :class:`Rule` for every
    tensor present; ``unused``: present tensors jaxlm has no place for (name → shape).
    """

    def __init__(self, path: str | Path) -> None:
        self.path, adapter = Path(path), None
        if is_peft_dir(self.path):  # its base model, with the adapter merged in on reading
            adapter, self.path = self.path, base_of(self.path)
        self.config = read_config(self.path)
        self.family = family_of(self.config)
        self.model = hf_model_config(self.config)
        self.architecture = (self.config.get("architectures") or [self.family.base])[0]
        files = _weight_files(self.path)
        self._where = {canonical(n, self.family.prefix): (f, n) for n, f in files.items()}
        self._open: dict[str, Any] = {}
        self._cache: tuple[str, np.ndarray] | None = None
        every = self.family.rules(self.model)
        known = {r.hf for r in every}
        self.rules = {r.jax: r for r in every if r.hf in self._where}
        self.unused = {n: self.shape(n) for n in self._where
                       if n not in known and _matches(n, self.family.unused)}
        extra = sorted(n for n in self._where if n not in known and n not in self.unused
                       and not _matches(n, self.family.ignored))
        if extra:
            listed = ", ".join(f"{self._where[n][1]} {self.shape(n)}" for n in extra[:MAX_LISTED])
            more = f" and {len(extra) - MAX_LISTED} more" if len(extra) > MAX_LISTED else ""
            raise HFError(f"{self.path} holds {len(extra)} tensors that a {self.architecture} "
                          f"with this config.json does not have: {listed}{more}")
        self.adapter = None if adapter is None else MergedAdapter(
            adapter, {n: self.shape(n) for n in self._where}, self.family)

    def __enter__(self) -> HFCheckpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._open.clear()
        self._cache = None

    def _file(self, file: str) -> Any:
        if file not in self._open:
            from safetensors import safe_open

            if not Path(file).is_file():
                raise HFError(f"{INDEX} lists {file}, which does not exist")
            self._open[file] = safe_open(file, "np")
        return self._open[file]

    def stored_name(self, name: str) -> str:
        return self._where[name][1]

    def display(self, rule: Rule) -> str:
        """The name ``rule``'s tensor has, or would have, in this checkpoint's files."""
        if rule.hf in self._where:
            return self.stored_name(rule.hf)
        prefixed = any(s.startswith(f"{self.family.prefix}.") for _, s in self._where.values())
        top = rule.jax.startswith(HEADS_TOP_LEVEL)
        return f"{self.family.prefix}.{rule.hf}" if prefixed and not top else rule.hf

    def get_slice(self, name: str) -> Any:
        """A lazy safetensors slice of tensor ``name`` (base-model naming)."""
        file, stored = self._where[name]
        return self._file(file).get_slice(stored)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.get_slice(name).get_shape())

    def read(self, name: str) -> np.ndarray:
        """The whole tensor ``name``; the last one read is kept (GPT-2's fused q|k|v)."""
        import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy

        if self._cache is None or self._cache[0] != name:
            value = self.get_slice(name)[:]
            if self.adapter is not None:
                value = self.adapter.update(name, value)
            self._cache = (name, value)
        return self._cache[1]

    def adapted(self, name: str) -> bool:
        """Whether a PEFT adapter changes tensor ``name`` (then read it whole: :meth:`read`)."""
        return self.adapter is not None and name in self.adapter.updates

    def heads(self) -> set[str]:
        """The jaxlm subtrees this checkpoint has tensors for (``backbone``, ``lm_head``...)."""
        return {key.split("/")[0] for key in self.rules}

    def rule(self, key: str) -> Rule | None:
        return self.rules.get(key)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)
