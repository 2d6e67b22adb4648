"""LoRA adapters ⇄ Hugging Face PEFT adapter directories (``adapter_config.json`` +
``adapter_model.safetensors``).

Writing (``jaxlm export RUN OUT --adapters-only``): each jaxlm adapter ``A`` (*in, r), ``B``
(r, *out) beside a kernel becomes PEFT's ``lora_A.weight`` (r, in) and ``lora_B.weight``
(out, r) of the Hugging Face module that kernel maps to (:mod:`jaxlm.hf.spec` rules). GPT-2
fuses query, key and value into one ``c_attn``: their three adapters become one of rank 3r
(A stacked, B block-diagonal; ``rank_pattern`` / ``alpha_pattern`` keep alpha/r), which is
exactly the same update. A trained task head goes in ``modules_to_save`` where Hugging Face
has its counterpart (span → ``qa_outputs``; a BERT-pooler classifier → ``classifier`` and
``pooler``). Keys are named for the task class PEFT wraps (``GPT2LMHeadModel``,
``BertForQuestionAnswering`` ...), as PEFT itself saves them.

Reading (a PEFT directory as ``finetune.backbone`` or ``jaxlm generate`` input): the base
model named by ``base_model_name_or_path`` (a local Hugging Face directory) with every
adapter merged into its weights, ``W + (alpha/r)·B·A``, translated by the same rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.hf.spec import Family, HFError, Rule

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
TOP_LEVEL = ("lm_head/", "mlm_head/")  # heads Hugging Face keeps outside the base model
TASK_CLASS = {"generate": "ForCausalLM", "span": "ForQuestionAnswering",
              "single_label": "ForSequenceClassification"}


def is_peft_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def _module(rule: Rule, family: Family) -> str:
    """The Hugging Face module a rule's tensor belongs to, named in the task model."""
    name = rule.hf.rsplit(".", 1)[0]
    return name if rule.jax.startswith(TOP_LEVEL) else f"{family.prefix}.{name}"


def _kernel_rules(model: Any, family: Family) -> dict[str, Rule]:
    """jaxlm module path (``backbone/block_0/attn/query``) → the rule of its kernel."""
    return {r.jax.rsplit("/", 1)[0]: r for r in family.rules(model) if r.jax.endswith("/kernel")}


def _head_modules(problem: str, finetune: dict[str, Any],
                  family: Family) -> dict[str, tuple[str, str]]:
    """jaxlm head module → (the ``modules_to_save`` entry, the Hugging Face module of its
    weight and bias)."""
    if problem == "span":
        return {"head/classifier": ("qa_outputs", "qa_outputs")}
    if problem == "single_label" and finetune.get("pooler") and finetune.get("pooling") in (
            None, "cls") and family.name == "bert":
        return {"head/classifier": ("classifier", "classifier"),
                "head/pooler": ("pooler", f"{family.prefix}.pooler.dense")}
    if problem == "generate":
        return {}
    raise HFError(f"--adapters-only: a finetune.problem={problem} head (pooling "
                  f"{finetune.get('pooling')}, pooler {finetune.get('pooler')}) has no Hugging "
                  "Face PEFT counterpart; export the merged model instead (without "
                  "--adapters-only)")


def write_peft(params: dict[str, np.ndarray], config: dict[str, Any], out: Path) -> list[str]:
    """Write a run's trained parameters (flat jaxlm paths → arrays: the adapters and the
    head) as a PEFT adapter directory; returns the files written."""
    from safetensors.numpy import save_file

    from jaxlm.config import ModelConfig
    from jaxlm.hf.checkpoint import BY_NAME  # (which reads adapters with this module)

    model = ModelConfig(**config["model"])
    lora, finetune = model.lora, config.get("finetune") or {}
    family = BY_NAME[model.family]
    problem = finetune.get("problem", "single_label")
    heads = _head_modules(problem, finetune, family)
    rules = _kernel_rules(model, family)
    r, tensors = lora.rank, {}
    fused: dict[str, dict[int, tuple[np.ndarray, np.ndarray, Rule]]] = {}
    for path in sorted(p for p in params if p.endswith("/lora_a")):
        module = path.rsplit("/", 1)[0]
        if module not in rules:
            raise HFError(f"--adapters-only: the adapted layer {module} has no Hugging Face "
                          f"{family.name} counterpart (stacked layers: model.scan_layers=true "
                          "runs export merged only)")
        a, b, rule = params[path], params[module + "/lora_b"], rules[module]
        a2 = a.reshape(-1, r).T.astype(np.float32)  # (r, in)
        b2 = b.reshape(r, -1).T.astype(np.float32)  # (out, r)
        fused.setdefault(_module(rule, family), {})[rule.part[0]] = (a2, b2, rule)
    rank_pattern, alpha_pattern = {}, {}
    for name, pieces in fused.items():
        n = next(iter(pieces.values()))[2].part[1]
        if n == 1:
            a2, b2, _ = pieces[0]
        else:  # one adapter of rank n·r: A stacked, B block-diagonal
            d_in = next(iter(pieces.values()))[0].shape[1]
            d_out = next(iter(pieces.values()))[1].shape[0]
            a2, b2 = np.zeros((n * r, d_in), np.float32), np.zeros((n * d_out, n * r), np.float32)
            for i, (ai, bi, _) in pieces.items():
                a2[i * r:(i + 1) * r] = ai
                b2[i * d_out:(i + 1) * d_out, i * r:(i + 1) * r] = bi
            rank_pattern[name], alpha_pattern[name] = n * r, n * lora.alpha
        tensors[f"base_model.model.{name}.lora_A.weight"] = a2
        tensors[f"base_model.model.{name}.lora_B.weight"] = b2
    for jax_module, (_, hf_module) in heads.items():
        kernel = params.get(jax_module + "/kernel")
        if kernel is None:
            continue
        tensors[f"base_model.model.{hf_module}.weight"] = np.ascontiguousarray(
            kernel.reshape(kernel.shape[0], -1).T.astype(np.float32))
        if jax_module + "/bias" in params:
            tensors[f"base_model.model.{hf_module}.bias"] = params[jax_module + "/bias"].astype(
                np.float32).reshape(-1)
    arch = family.base.replace("Model", TASK_CLASS.get(problem, "Model"))
    adapter_config = {
        "peft_type": "LORA", "task_type": {"generate": "CAUSAL_LM", "span": "QUESTION_ANS",
                                           "single_label": "SEQ_CLS"}.get(problem),
        "base_model_name_or_path": finetune.get("base"), "r": r, "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout, "target_modules": sorted(fused),
        "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern, "bias": "none",
        "fan_in_fan_out": family.name == "gpt2",
        "modules_to_save": sorted(m for m, _ in heads.values()) or None,
        "inference_mode": True, "init_lora_weights": True, "use_rslora": False,
        "use_dora": False, "auto_mapping": {"base_model_class": arch,
                                            "parent_library": "transformers"},
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{WEIGHTS}.tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
              metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS)
    (out / CONFIG).write_text(json.dumps(adapter_config, indent=2))
    return [str(out / WEIGHTS), str(out / CONFIG)]


# ---------------------------------------------------------------------------------- reading


def read_peft_config(path: str | Path) -> dict[str, Any]:
    """``adapter_config.json``, checked to be a LoRA adapter on a local base model."""
    path = Path(path)
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise HFError(f"{path / CONFIG} is not readable JSON: {e}") from None
    if config.get("peft_type") != "LORA":
        raise HFError(f"{path / CONFIG}: peft_type {config.get('peft_type')!r}; jaxlm reads "
                      "LoRA adapters only")
    if config.get("use_dora") or config.get("use_rslora"):
        raise HFError(f"{path / CONFIG}: DoRA / rsLoRA adapters are not supported")
    return config


def base_of(path: str | Path, base: str | None = None) -> Path:
    """The adapter's base model directory: ``base`` if given, else its
    ``base_model_name_or_path``, which must be a local Hugging Face directory."""
    named = base or read_peft_config(path).get("base_model_name_or_path")
    if not named or not (Path(named) / "config.json").is_file() or is_peft_dir(named):
        raise HFError(f"PEFT adapter {path}: its base model {named!r} is not a local Hugging "
                      "Face model directory (config.json + safetensors); set "
                      "base_model_name_or_path in its adapter_config.json to one (the hub is "
                      "not reached)")
    return Path(named)


class MergedAdapter:
    """A PEFT adapter's updates of its base's tensors (Hugging Face layout and base-model
    naming), checked against the base's shapes: :meth:`update` adds one to a base tensor.
    Saved task heads (``modules_to_save``) are not read: a backbone gets a fresh head."""

    def __init__(self, path: str | Path, base_shapes: dict[str, tuple[int, ...]],
                 family: Family) -> None:
        from safetensors.numpy import load_file

        self.path, config = Path(path), read_peft_config(path)
        self.updates: dict[str, np.ndarray] = {}
        tensors = load_file(str(self.path / WEIGHTS))
        fan_in_fan_out = bool(config.get("fan_in_fan_out"))
        for key, a in tensors.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b = tensors[key.replace("lora_A", "lora_B")]
            leaf = module.rsplit(".", 1)[-1]
            r = config.get("rank_pattern", {}).get(module, config.get("rank_pattern", {}).get(
                leaf, config["r"]))
            alpha = config.get("alpha_pattern", {}).get(module, config.get(
                "alpha_pattern", {}).get(leaf, config["lora_alpha"]))
            update = (b.astype(np.float64) @ a.astype(np.float64)) * (alpha / r)  # (out, in)
            name = self._base_name(module, base_shapes, family) + ".weight"
            shape = base_shapes[name]
            if fan_in_fan_out:
                update = update.T  # Conv1D keeps (in, out)
            if tuple(update.shape) != tuple(shape):
                raise HFError(f"PEFT adapter {path} does not match its base: {module} "
                              f"updates a {tuple(update.shape)} weight, the base's {name} is "
                              f"{tuple(shape)}")
            self.updates[name] = update.astype(np.float32)
        if not self.updates:
            raise HFError(f"PEFT adapter {path} holds no LoRA weights")

    @staticmethod
    def _base_name(module: str, shapes: dict[str, Any], family: Family) -> str:
        """The base checkpoint's name of an adapted module (with or without the task
        model's prefix)."""
        for name in (module, module.removeprefix(family.prefix + "."),
                     f"{family.prefix}.{module}"):
            if name + ".weight" in shapes:
                return name
        raise HFError(f"a PEFT adapter adapts {module}, which its base model does not have")

    def update(self, name: str, value: np.ndarray) -> np.ndarray:
        """The base tensor ``name`` (``value``) as the adapted model has it."""
        if name in self.updates:
            return (value.astype(np.float32) + self.updates[name]).astype(value.dtype)
        return value

