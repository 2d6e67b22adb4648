"""Reading the parameters of a run that trained only part of them (LoRA, a frozen backbone).

Such a run's checkpoints hold the trained parameters only — the adapters and the task head;
its config records which subtrees stayed frozen (``finetune.frozen``) and the backbone they
are read back from (``finetune.base``: a checkpoint step, an export or a Hugging Face
directory). :func:`read_params` answers :func:`~jaxlm.checkpoint.export.load_params` for any
run: the saved parameters, the frozen ones read from the base, and — where the caller's tree
has no adapters (a merged export, a backbone for another run) — the adapters folded into
their kernels (:func:`jaxlm.models.lora.merge`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from jaxlm.checkpoint.compat import CheckpointError
from jaxlm.checkpoint.reader import SavedRun
from jaxlm.config import LoraConfig
from jaxlm.models.lora import is_adapter, merge

Loader = Callable[..., Any]  # load_params(path, abstract_params, step=, subtree=)


def _flat(tree: Any) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/") if tree else {}


def _unflat(flat: dict[str, Any]) -> Any:
    return traverse_util.unflatten_dict(flat, sep="/")


def _replicated_like(like: Any, meta: Any) -> jax.ShapeDtypeStruct:
    """An abstract array shaped as the saved ``meta``, replicated over ``like``'s devices."""
    sharding = like.sharding
    if isinstance(sharding, NamedSharding):
        sharding = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.ShapeDtypeStruct(tuple(meta.shape), like.dtype, sharding=sharding)


def read_params(run: SavedRun, step: int, target: Any, subtree: str | None,
                load: Loader) -> Any:
    """``step``'s parameters (or their ``subtree``) as ``target`` describes them, from a run
    that may have saved only its trained part (see the module docstring)."""
    saved = _flat(run.param_metadata(step, subtree) or {})
    want = _flat(target)
    adapters = {k: m for k, m in saved.items() if is_adapter(k) and k not in want}
    missing = [k for k in want if k not in saved]
    if not adapters and not missing:
        return run.params(step, target, subtree)
    config = run.config(step) or {}
    f, model = config.get("finetune") or {}, config.get("model") or {}
    base = f.get("base")
    if missing and not base:
        return run.params(step, target, subtree)  # a plain mismatch: its one-line error
    # the whole tree the run computes with: the caller's, plus the adapters it lacks
    full = dict(want)
    for k, m in adapters.items():
        kernel = want.get(k.rsplit("/", 1)[0] + "/kernel")
        if kernel is None:
            raise CheckpointError(f"checkpoint {run.directory / str(step)}: adapter {k} has no "
                                  "kernel in the parameters asked for")
        full[k] = _replicated_like(kernel, m)
    trained = run.params(step, _unflat({k: v for k, v in full.items() if k in saved}), subtree)
    params = _flat(trained)
    if missing:
        params.update(_flat(_read_base(run, step, base, {k: full[k] for k in missing},
                                       subtree, load)))
    out = _unflat(params)
    if adapters:
        out = merge(out, LoraConfig(**model.get("lora") or {}))
    return out


def require_base(where: Path, base: str) -> None:
    """Refuse, in one line, a run whose base (``finetune.base``) is gone."""
    if not Path(base).exists():
        raise CheckpointError(
            f"{where} holds only the parameters its run trained (LoRA adapters, head); the "
            f"frozen backbone is read from finetune.base={base}, which no longer exists: put "
            "it back there, or export the run where its base exists (`jaxlm export` merges)")


def _read_base(run: SavedRun, step: int, base: str, wanted: dict[str, Any],
               subtree: str | None, load: Loader) -> Any:
    """The frozen parameters ``wanted`` (flat paths → abstract arrays) from the run's base,
    one top-level subtree at a time (a base holds a whole model: e.g. ``backbone`` and a
    pretraining head the run never used)."""
    where = run.directory / str(step)
    require_base(where, base)
    if subtree is not None:  # the caller's subtree (a backbone) is frozen whole or in part
        try:
            return load(base, _unflat(wanted), subtree=subtree)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: its frozen {subtree} does not match its base "
                                  f"finetune.base={base}: {e}") from None
    tops: dict[str, dict[str, Any]] = {}
    for k, v in wanted.items():
        top, rest = k.split("/", 1) if "/" in k else (k, "")
        tops.setdefault(top, {})[rest] = v
    out: dict[str, Any] = {}
    for top, leaves in tops.items():
        try:
            part = load(base, _unflat(leaves), subtree=top)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: its frozen {top} does not match its base "
                                  f"finetune.base={base}: {e}") from None
        out.update({f"{top}/{k}": v for k, v in _flat(part).items()})
    return _unflat(out)
