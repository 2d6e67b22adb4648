"""LoRA: a trainable low-rank update beside a frozen dense layer (Hu et al., 2021).

A targeted :class:`~jaxlm.models.layers.Dense` computes ``y = x·W + (alpha/r)·(drop(x)·A)·B``
with ``A`` (*in, r) and ``B`` (r, *out) — ``lora_a`` / ``lora_b`` beside its ``kernel``,
sharded on the kernel's input and output axes. ``B`` starts at zero, so an adapted model
starts as the base model exactly. Which layers are adapted is ``model.lora.targets``
(resolved by :func:`targeted`); fine-tuning sets it from ``finetune.lora``.

:func:`merge` folds the adapters into the kernels (``W + (alpha/r)·A·B``): what
``jaxlm export`` writes by default, and what a model without adapters loads.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ConfigError, LoraConfig
from jaxlm.models.matmul import contract

LEAVES = ("lora_a", "lora_b")  # the adapter's parameter names, beside a kernel
# Shorthands of finetune.lora.targets: the layers' module names (models/attention.py, layers.py)
GROUPS = {"attention": ("query", "key", "value", "out"), "mlp": ("fc", "gate", "up", "proj")}


def patterns(targets: Iterable[str]) -> list[str]:
    """``targets`` with the group names expanded into module names."""
    return [name for t in targets for name in GROUPS.get(t, (t,))]


def matches(path: str, pattern: str) -> bool:
    """A module path (``backbone/block_0/attn/query``) matches a bare module name
    (``query``) or a glob over the whole path (``backbone/block_[0-2]/*/value``)."""
    return path.rsplit("/", 1)[-1] == pattern or fnmatch.fnmatchcase(path, pattern)


def targeted(path: tuple[str, ...], lora: LoraConfig | None) -> bool:
    """Whether the dense layer at module ``path`` carries an adapter: LoRA is on, the layer is
    in the backbone (task heads are trained whole) and it matches a target."""
    if lora is None or not lora.rank or not path or path[0] != "backbone":
        return False
    joined = "/".join(path)
    return any(matches(joined, p) for p in patterns(lora.targets))


def is_adapter(path: str) -> bool:
    """A parameter path (``.../query/lora_a``) that is an adapter's."""
    return path.rsplit("/", 1)[-1] in LEAVES


def delta(x: jax.Array, a: jax.Array, b: jax.Array, n_in: int, lora: LoraConfig,
          dtype: str, module: nn.Module) -> jax.Array:
    """The adapter's output (alpha/r)·(drop(x)·A)·B: (..., *in) → (..., *out) in f32.
    Dropout is on when the module has a dropout rng (training)."""
    if lora.dropout and module.has_rng("dropout"):
        x = nn.Dropout(lora.dropout, deterministic=False)(x, rng=module.make_rng("dropout"))
    low = contract(x, a, n_in, dtype)  # (..., r)
    return contract(low, b, 1, dtype) * (lora.alpha / lora.rank)  # (..., *out)


def a_init(n_in: int) -> Any:
    """``A``'s initialiser: PEFT's (kaiming-uniform with a=√5: U(±1/√fan_in)) over the
    kernel's ``n_in`` input axes."""
    return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform",
                                            in_axis=tuple(range(n_in)), out_axis=-1)


def merge(params: Any, lora: LoraConfig) -> Any:
    """``params`` with every adapter folded into its kernel and removed:
    ``kernel + (alpha/r)·A·B``, computed in f32 and cast back to the kernel's dtype. Works
    on stacked (scanned) layers too: A (layers, *in, r), B (layers, r, *out)."""
    if not isinstance(params, dict):
        return params
    if "lora_a" in params:
        a, b, w = params["lora_a"], params["lora_b"], params["kernel"]
        scale = lora.alpha / lora.rank
        stacked = a.ndim + b.ndim - 2 > w.ndim  # a leading layers axis on all three
        n_in = a.ndim - 1 - int(stacked)
        lead = "l" if stacked else ""
        ins, outs = "abcdefg"[:n_in], "mnopq"[: b.ndim - 1 - int(stacked)]
        spec = f"{lead}{ins}r,{lead}r{outs}->{lead}{ins}{outs}"
        update = jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32))
        rest = {k: v for k, v in params.items() if k not in LEAVES}
        return {**rest, "kernel": (w.astype(jnp.float32) + scale * update).astype(w.dtype)}
    return {k: merge(v, lora) for k, v in params.items()}


def check_targets(paths: Iterable[str], lora: LoraConfig) -> None:  # paths of parameters
    """Refuse, in one line, a target pattern that adapts no layer of the backbone (its
    dense layers are listed) — checked on the parameter paths of the adapted model."""
    paths = list(paths)
    adapted = ["/".join(p.split("/")[:-1]) for p in paths if p.endswith("/lora_a")]
    layers = sorted({p.rsplit("/", 1)[0] for p in paths
                     if p.startswith("backbone/") and p.endswith("/kernel")})
    names = sorted({p.rsplit("/", 1)[-1] for p in layers})
    for target in lora.targets:
        if not any(matches(m, p) for m in adapted for p in patterns([target])):
            raise ConfigError(
                f"finetune.lora.targets: {target!r} matches no dense layer of the backbone; "
                f"use 'attention', 'mlp', a layer name ({', '.join(names)}) or a glob over "
                f"paths such as {layers[0] if layers else 'backbone/block_0/attn/query'}")


def check_rank(shapes: dict[str, tuple[int, ...]], lora: LoraConfig) -> None:
    """Refuse a rank above the smaller side of an adapted layer (a low-rank update that is
    not low-rank), naming the layer."""
    for path, shape in shapes.items():
        if not path.endswith("/lora_a"):
            continue
        kernel = shapes[path.rsplit("/", 1)[0] + "/kernel"]
        b = shapes[path.rsplit("/", 1)[0] + "/lora_b"]
        lead = int(len(shape) + len(b) - 2 > len(kernel))  # stacked layers: a layers axis
        d_in, d_out = math.prod(shape[lead:-1]), math.prod(b[lead + 1:])
        if lora.rank > min(d_in, d_out):
            raise ConfigError(
                f"finetune.lora.rank={lora.rank} is larger than the layer "
                f"{path.rsplit('/', 1)[0]} ({d_in} → {d_out}); use a rank of at most "
                f"{min(d_in, d_out)}")
