"""Hugging Face weights straight into a sharded jaxlm parameter tree, tensor by tensor.

:func:`load_hf_params` takes the expected tree (``jax.ShapeDtypeStruct`` leaves with
shardings), checks every tensor's name and shape against the checkpoint first, then builds
each array with ``jax.make_array_from_callback``: every device shard is cut from one host
copy of one tensor (plain tables are read slice by slice), so a model larger than one device
never sits whole on any device, and host memory holds one tensor at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.hf.checkpoint import MAX_LISTED, HFCheckpoint
from jaxlm.hf.spec import HFError, Rule


def _key(keypath: Any) -> str:
    return jax.tree_util.keystr(keypath, simple=True, separator="/")


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def check(ckpt: HFCheckpoint, keys: dict[str, tuple[int, ...]]) -> None:
    """Every jaxlm ``key`` (path → shape) has its HF tensor, of the right shape; else one
    line naming the tensors (missing) or the tensor and both shapes (mismatch)."""
    missing, unknown, wrong = [], [], []
    every = {r.jax: r for r in ckpt.family.rules(ckpt.model)}
    for key, shape in keys.items():
        rule = ckpt.rule(key)
        if rule is None:
            if key in every:
                missing.append(ckpt.display(every[key]))
            else:
                unknown.append(key)
            continue
        want, have = rule.hf_shape(shape), ckpt.shape(rule.hf)
        if want != have:
            wrong.append(f"{ckpt.stored_name(rule.hf)}: {have} in the checkpoint, {want} "
                         "expected from config.json")
    if unknown:
        raise HFError(f"a Hugging Face {ckpt.family.model_type} checkpoint has no tensors for "
                      f"the jaxlm parameters {_listed(sorted(unknown))}")
    if missing:
        raise HFError(f"{ckpt.path} lacks {len(set(missing))} tensors this "
                      f"{ckpt.architecture} needs: {_listed(sorted(set(missing)))}")
    if wrong:
        raise HFError(f"{ckpt.path}: shape mismatch, {_listed(wrong)}")


def array(ckpt: HFCheckpoint, rule: Rule, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The whole jaxlm tensor of ``rule`` on the host."""
    return rule.to_jax(ckpt.read(rule.hf), shape).astype(dtype)


def _place(ckpt: HFCheckpoint, rule: Rule, like: jax.ShapeDtypeStruct) -> jax.Array:
    if rule.layout == "same" and not ckpt.adapted(rule.hf):  # only this process's slices
        source = ckpt.get_slice(rule.hf)
        return jax.make_array_from_callback(like.shape, like.sharding,
                                            lambda idx: np.asarray(source[idx], like.dtype))
    full = array(ckpt, rule, like.shape, like.dtype)
    return jax.make_array_from_callback(like.shape, like.sharding, lambda idx: full[idx])


def load_hf_params(path: str | Path, abstract_params: Any, subtree: str | None = None) -> Any:
    """The parameters of the HF model at ``path``, placed as ``abstract_params`` says.

    ``subtree`` (e.g. ``"backbone"``) means ``abstract_params`` describes only that part of
    the jaxlm tree. Missing tensors, tensors jaxlm does not know and shape mismatches are
    :class:`HFError`s naming them.
    """
    import ml_dtypes  # noqa: F401 - bfloat16 checkpoints

    prefix = f"{subtree}/" if subtree else ""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
    keys = [prefix + _key(kp) for kp, _ in leaves]
    with HFCheckpoint(path) as ckpt:
        check(ckpt, {k: tuple(like.shape) for k, (_, like) in zip(keys, leaves, strict=True)})
        arrays = [_place(ckpt, ckpt.rule(k), like)
                  for k, (_, like) in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, arrays)


def hf_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """What the HF checkpoint holds (metadata only): jaxlm path → shape of its piece of the
    HF tensor (as many values as the jaxlm tensor) for every tensor jaxlm reads, and HF
    name → shape for the ones it has no place for."""
    with HFCheckpoint(path) as ckpt:
        out: dict[str, tuple[int, ...]] = {}
        for key, rule in ckpt.rules.items():
            *rest, last = ckpt.shape(rule.hf)
            out[key] = (*rest, last // rule.part[1])
        out.update({ckpt.stored_name(n): s for n, s in ckpt.unused.items()})
        return out
