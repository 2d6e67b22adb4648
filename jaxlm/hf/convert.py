"""``jaxlm convert``: Hugging Face model directories ⇄ jaxlm export directories.

HF → jaxlm: ``model.safetensors`` keyed by jaxlm paths (``backbone/block_0/attn/query/kernel``,
plus ``lm_head``/``mlm_head`` where the checkpoint has them, and a BERT pooler as
``head/pooler``, used by ``finetune.pooler=true``), ``config.json`` in jaxlm's run-config form
(the translated ``model``, ``data.tokenizer`` = the copied tokenizer, ``data.mode`` = mlm for
encoders) and ``tokenizer.json``; the source ``config.json`` is kept verbatim as
``hf_config.json``, so that converting back writes it again (dropout rates, ``pad_token_id``,
``initializer_range`` and every other key jaxlm's model has no field for) instead of jaxlm's
defaults.

jaxlm → HF (from an export, or a run directory, exported first): ``config.json`` of the
family's HF class (``GPT2LMHeadModel``, ``LlamaForCausalLM``, ``BertForMaskedLM`` or
``BertModel``), ``model.safetensors`` in HF naming and ``tokenizer.json``, loadable with
``transformers``' ``from_pretrained``. Fine-tuning heads other than the BERT pooler have no
HF counterpart here and are left out (listed).

Weights stream tensor by tensor in both directions; host memory holds about one tensor.

``dtype`` (``--dtype``) is the model's dtype, as Hugging Face's ``config.json`` means it: that
of the written weights and of the computation. ``auto`` (the default) writes float32 weights
and, HF → jaxlm, leaves ``model.dtype=auto`` in the export (bf16 compute where the hardware
has native bf16: GPUs, TPUs, CPUs with AVX512-BF16/AMX; float32 elsewhere); ``float32`` or
``bfloat16`` writes weights of that dtype and records it as the export's compute dtype, so
``jaxlm generate`` and fine-tuning from it compute in it on every machine.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from jaxlm.checkpoint.compat import CheckpointError, locate
from jaxlm.checkpoint.export import export, is_export
from jaxlm.config import ModelConfig
from jaxlm.data.tokenizer import load_tokenizer, special_ids
from jaxlm.hf.checkpoint import (
    BY_NAME,
    HEADS_TOP_LEVEL,
    HFCheckpoint,
    is_hf_dir,
    read_config,
    run_config,
)
from jaxlm.hf.load import array, check
from jaxlm.hf.safetensors_stream import write_safetensors
from jaxlm.hf.spec import Family, HFError, Rule
from jaxlm.hf.tokenizer import require_tokenizer
from jaxlm.models import DecoderLM, MaskedLM
from jaxlm.models.heads import SequenceClassificationHead
from jaxlm.runtime.hardware import resolve_auto

WEIGHTS = "model.safetensors"
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
CHOICES = ("auto", *DTYPES)  # --dtype: auto = float32 weights, the hardware's compute dtype


def weights_dtype(dtype: str) -> str:
    """The dtype weights are written in for ``--dtype`` (``auto``: float32)."""
    return "float32" if dtype == "auto" else dtype
POOLER = "head/pooler/"
HF_CONFIG = "hf_config.json"  # in an export converted from HF: the source config.json


def model_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """jaxlm path → shape of every parameter of the model's pretraining model (decoder LM or
    masked LM) and of a BERT-style pooler (``head/pooler``), from abstract evaluation."""
    import flax.linen as nn


    def flat(tree: Any, prefix: str = "") -> dict[str, tuple[int, ...]]:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {prefix + jax.tree_util.keystr(kp, simple=True, separator="/"): tuple(x.shape)
                for kp, x in leaves}

    rng, tokens = jax.random.PRNGKey(0), np.zeros((1, 8), np.int32)
    model = resolve_auto(model)  # (shapes only; the model wants concrete settings)
    lm = MaskedLM(model) if model.is_encoder else DecoderLM(model)
    shapes = flat(jax.eval_shape(lambda r: nn.unbox(lm.init(r, tokens)["params"]), rng))
    head = SequenceClassificationHead(model, num_labels=2, pooler=True)
    h, mask = np.zeros((1, 8, model.d_model), np.float32), np.ones((1, 8), bool)
    pooler = jax.eval_shape(lambda r: nn.unbox(head.init(r, h, mask)["params"]["pooler"]), rng)
    return shapes | flat(pooler, "head/pooler/")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise HFError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise HFError(f"output directory {out} is not empty; pass --overwrite to write into it")
    out.mkdir(parents=True, exist_ok=True)


def hf_to_jaxlm(src: str | Path, out: str | Path, dtype: str = "auto",
                overwrite: bool = False) -> str:
    """Convert an HF model directory into a jaxlm export; returns a one-line summary.
    ``dtype``: see the module docstring (recorded as the export's ``model.dtype``)."""
    src, out = Path(src), Path(out)
    with HFCheckpoint(src) as ckpt:
        model = ckpt.model if dtype == "auto" else ckpt.model.model_copy(update={"dtype": dtype})
        tokenizer = require_tokenizer(src)
        shapes = model_shapes(model)
        heads = ckpt.heads() | {"backbone"}
        keys = {k: s for k, s in shapes.items() if k.split("/")[0] in heads}
        check(ckpt, keys)  # a head is written whole or not at all
        _prepare_out(out, overwrite)
        stored = weights_dtype(dtype)
        np_dtype = DTYPES[stored]
        write_safetensors(out / WEIGHTS, {k: (s, np_dtype) for k, s in keys.items()},
                          lambda k: array(ckpt, ckpt.rule(k), keys[k], np_dtype),
                          metadata={"format": "jaxlm", "dtype": stored, "source": "huggingface",
                                    "architecture": ckpt.architecture})
        unused = [f"{ckpt.stored_name(n)} {s}" for n, s in ckpt.unused.items()]
    tokenizer.save(str(out / "tokenizer.json"))
    config = run_config(model, str((out / "tokenizer.json").absolute()))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / HF_CONFIG).write_text(json.dumps(ckpt.config, indent=2))
    n = sum(int(np.prod(s)) for s in keys.values())
    parts = ", ".join(sorted(h if h != "head" else "head/pooler" for h in heads))
    return (f"wrote {out}: a jaxlm export of {ckpt.architecture} ({model.family}, "
            f"{n / 1e6:.2f}M params, {stored} weights, model.dtype={dtype}; {parts})"
            + (f"; unused: {', '.join(unused)}" if unused else ""))


def _check_representable(family: Family, model: ModelConfig) -> None:
    for key, allowed in family.fixed.items():
        value = getattr(model, key)
        if value not in allowed:
            raise HFError(f"model.{key}={value!r} cannot be written as a Hugging Face "
                          f"{family.model_type} model (which has {key} in {list(allowed)})")


def _special_token_ids(tokenizer: Any, model: ModelConfig) -> dict[str, int]:
    """The pad (and, for decoders, begin/end of text) ids HF's config.json records."""

    ids = special_ids(tokenizer)
    found = {"pad_token_id": ids.pad}
    if model.causal:
        found.update(bos_token_id=ids.bos, eos_token_id=ids.eos)
    return {k: v for k, v in found.items() if v is not None}


def _source_config(export_dir: Path, family: Family, model: ModelConfig) -> dict[str, Any] | None:
    """The HF ``config.json`` an export was converted from (its ``hf_config.json``), if it
    still describes the export's model: same family and every setting jaxlm reads from it
    equal (an unreadable or unrelated one is ignored, and jaxlm's own translation used).
    Only for weights that ``hf_to_jaxlm`` wrote (their metadata says so)."""
    try:
        source = json.loads((export_dir / HF_CONFIG).read_text())
        if not isinstance(source, dict) or source.get("model_type") != family.model_type:
            return None
        fields = family.config_from_hf(source)
    except (OSError, ValueError, HFError):
        return None
    same = all(getattr(model, k, None) == v for k, v in fields.items())
    return source if same else None


def _export_dir(src: Path, tmp: str) -> Path:
    """``src`` if it is a jaxlm export, else its latest checkpoint exported into ``tmp``."""

    if is_export(src):
        return src if src.is_dir() else src.parent
    return export(src, tmp).parent


def _hf_layout(family: Family, model: ModelConfig, names: set[str],
               arch: str) -> tuple[dict[str, list[Rule]], list[str]]:
    """HF tensor name → the rules (pieces, in order) that make it, for the jaxlm tensors
    ``names`` written as ``arch``; and the jaxlm tensors left out. Base-model tensors take
    the family prefix inside task models; a pooler is written only for the base model."""
    every = family.rules(model)
    missing = [r.jax for r in every if r.jax.startswith("backbone/") and r.jax not in names]
    if missing:
        raise HFError(f"the export lacks {len(missing)} backbone tensors of its config.json "
                      f"model: {', '.join(missing[:6])}")
    base = arch == family.base
    rules = [r for r in every if r.jax in names
             and (not r.jax.startswith("head/") or (base and r.jax.startswith(POOLER)))]
    layout: dict[str, list[Rule]] = defaultdict(list)
    for r in sorted(rules, key=lambda r: r.part[0]):
        top = base or r.jax.startswith(HEADS_TOP_LEVEL)
        layout[r.hf if top else f"{family.prefix}.{r.hf}"].append(r)
    return dict(layout), sorted(names - {r.jax for r in rules})


def jaxlm_to_hf(src: str | Path, out: str | Path, dtype: str = "auto",
                overwrite: bool = False) -> str:
    """Convert a jaxlm export (or run directory) into an HF model directory; ``dtype``
    (``auto``: float32) is that of the weights and of the HF config's ``dtype``."""
    from safetensors import safe_open


    src, out = Path(src), Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = _export_dir(src, tmp)
        saved = json.loads((export_dir / "config.json").read_text())
        model = ModelConfig(**saved["model"])
        family = BY_NAME[model.family]
        _check_representable(family, model)
        hf_config = family.config_to_hf(model)
        tok_file = export_dir / "tokenizer.json"
        tokenizer = load_tokenizer(str(tok_file) if tok_file.is_file()
                                   else saved.get("data", {}).get("tokenizer", "default"))
        with safe_open(str(export_dir / WEIGHTS), "np") as f:
            names = set(f.keys())
            # weights `jaxlm export` wrote over an earlier conversion never take its config
            from_hf = (f.metadata() or {}).get("source") == "huggingface"
            source = _source_config(export_dir, family, model) if from_hf else None
            arch = family.architecture(model, {k.split("/")[0] for k in names})
            layout, left_out = _hf_layout(family, model, names, arch)

            def produce(name: str) -> np.ndarray:  # one HF tensor from its jaxlm pieces
                pieces = [r.to_hf(f.get_tensor(r.jax).astype(np.float32)) for r in layout[name]]
                return np.concatenate(pieces, axis=-1) if len(pieces) > 1 else pieces[0]

            dtype = weights_dtype(dtype)
            np_dtype = DTYPES[dtype]
            specs = {name: (rs[0].hf_shape(tuple(f.get_slice(rs[0].jax).get_shape())), np_dtype)
                     for name, rs in layout.items()}
            _prepare_out(out, overwrite)
            write_safetensors(out / WEIGHTS, specs, produce, metadata={"format": "pt"})
    if source is not None:  # converted from HF: its own config again, with what was written
        config = {**source, "architectures": [arch], "dtype": dtype}
        if "torch_dtype" in config:  # (older transformers' name)
            config["torch_dtype"] = dtype
    else:
        config = {"architectures": [arch], "model_type": family.model_type, **hf_config,
                  **_special_token_ids(tokenizer, model), "dtype": dtype}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save(str(out / "tokenizer.json"))
    note = f"; left out (no {arch} counterpart): {', '.join(left_out)}" if left_out else ""
    return f"wrote {out}: {arch} ({len(specs)} tensors, {dtype}) from {src}{note}"


def detect(src: str | Path) -> str:
    """``"jaxlm"`` (the direction) for an HF directory, ``"hf"`` for a jaxlm export or run."""

    p = Path(src)
    if not p.exists():
        raise HFError(f"{src} does not exist")
    if is_hf_dir(p):
        return "jaxlm"
    if is_export(p):
        return "hf"
    try:
        locate(p)
        return "hf"
    except CheckpointError:
        pass
    if (p / "config.json").is_file():
        read_config(p)  # names what is wrong with it
    raise HFError(f"{src} is neither a Hugging Face model directory (config.json with "
                  "model_type) nor a jaxlm export or run directory")


def convert(src: str | Path, out: str | Path, to: str | None = None, dtype: str = "auto",
            overwrite: bool = False) -> str:
    """Convert ``src`` to ``out`` in the direction ``to`` (default: from what ``src`` is);
    ``dtype`` (auto, float32, bfloat16): see the module docstring."""
    if dtype not in CHOICES:
        raise HFError(f"--dtype {dtype} is not one of {', '.join(CHOICES)}")
    found = detect(src)
    if to is not None and to != found:
        what = "a Hugging Face model directory" if found == "jaxlm" else "a jaxlm export/run"
        raise HFError(f"--to {to}: {src} is {what}, which converts to {found}")
    if Path(src).resolve() == Path(out).resolve():
        raise HFError("SRC and OUT must be different directories")
    if found == "jaxlm":
        return hf_to_jaxlm(src, out, dtype, overwrite)
    return jaxlm_to_hf(src, out, dtype, overwrite)
