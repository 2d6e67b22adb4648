"""Does a checkpoint fit this run? Where it is, which parameters differ, what config changed.

Pure checks with one-line answers, shared by :mod:`jaxlm.checkpoint.checkpointer` (resuming a run)
and :mod:`jaxlm.checkpoint.export` (loading parameters): :func:`locate` turns a user's path into a
checkpoints directory and step, :func:`mismatches` compares a saved tree with the expected
one path by path, :func:`config_differences` names the settings that make a run's state
unusable for another (the model architecture, ``data.seq_len``, ``train.global_batch``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxlm.config import Config
from jaxlm.errors import UserError

# Model fields that change how the model is computed (or where its first weights came
# from) but not what its parameters are.
RUNTIME_MODEL_FIELDS = frozenset({"attention", "dtype", "remat", "dropout", "init_from", "lora"})
MAX_LISTED = 8  # differences named in one error message


class CheckpointError(UserError):
    """A checkpoint that cannot be used as asked (wrong path, other model, other config)."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (unreadable) or part of it could not be used."""


def locate(path: str | Path) -> tuple[Path, int | None]:
    """``(checkpoints directory, step or None for its latest)`` for a run directory, its
    ``checkpoints`` directory, or one step directory in it."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint path '{path}' does not exist or is not a directory")
    if (p / "checkpoints").is_dir():
        return p / "checkpoints", None
    if p.name.isdigit() and (p / "state").is_dir():
        return p.parent, int(p.name)
    if any(c.name.isdigit() for c in p.iterdir()):
        return p, None
    raise CheckpointError(f"'{path}' is not a run directory, a checkpoints directory or a "
                          "checkpoint step directory")


def flat_shapes(tree: Any, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """``{"params/block_0/attn/query/kernel": shape}`` for arrays, array metadata or
    ShapeDtypeStructs; named tuples count as dicts, as Orbax stores them."""
    if tree is None:
        return {}
    if isinstance(tree, Mapping):
        items: Any = tree.items()
    elif hasattr(tree, "_fields"):
        items = ((f, getattr(tree, f)) for f in tree._fields)
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return {prefix: tuple(tree.shape)} if hasattr(tree, "shape") else {}
    out: dict[str, tuple[int, ...]] = {}
    for k, v in items:
        out.update(flat_shapes(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def mismatches(saved: Any, target: Any) -> list[str]:
    """Differences between a checkpoint's tree (metadata) and the expected one, one string
    each: missing paths, extra paths, other shapes; optimizer-state entries (which mirror
    the parameters) last."""
    a, b = flat_shapes(saved), flat_shapes(target)
    found = []  # (kind, text)
    for path in a.keys() | b.keys():
        if path not in a:
            found.append((0, f"{path} {b[path]}: missing from the checkpoint"))
        elif path not in b:
            found.append((1, f"{path} {a[path]}: only in the checkpoint"))
        elif a[path] != b[path]:
            found.append((2, f"{path}: checkpoint {a[path]} vs model {b[path]}"))
    found.sort(key=lambda f: (f[1].startswith("opt_state"), f[0], f[1]))
    return [text for _, text in found]


def describe_mismatch(where: str, diffs: list[str]) -> str:
    shown = "; ".join(diffs[:MAX_LISTED])
    more = f"; and {len(diffs) - MAX_LISTED} more" if len(diffs) > MAX_LISTED else ""
    return (f"{where} does not fit this model ({len(diffs)} differences): {shown}{more}")


def tokenizer_reference(cfg: Config, tokenizer: Any) -> dict[str, Any]:
    """What identifies the tokenizer (item ``tokenizer``): the config's name for it, its
    vocabulary size and a SHA-256 of its JSON serialization."""
    return {"tokenizer": cfg.data.tokenizer,
            "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
            "sha256": hashlib.sha256(tokenizer.to_str().encode()).hexdigest()}


_ABSENT = object()


def _get(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, _ABSENT) if isinstance(d, dict) else _ABSENT
    return d


SCHEDULE_KEYS = ("train.steps", "train.lr", "train.warmup_steps", "train.min_lr_ratio")


def schedule_differences(saved: dict[str, Any], cfg: Config) -> list[str]:
    """The pretraining learning-rate schedule's settings that a resumed run changed (they are
    allowed: a run may be extended, but its schedule is then recomputed)."""
    return _differing(saved, cfg.to_dict(), SCHEDULE_KEYS)


def _differing(saved: dict[str, Any], now: dict[str, Any], keys: Any) -> list[str]:
    """``key=saved (checkpoint) vs now`` for each dotted key set in both and different."""
    return [f"{k}={_get(saved, k)!r} (checkpoint) vs {_get(now, k)!r}" for k in keys
            if _get(saved, k) is not _ABSENT and _get(saved, k) != _get(now, k)]


def config_differences(saved: dict[str, Any], cfg: Config,
                       extra: tuple[str, ...] = ()) -> list[str]:
    """What makes a saved run incompatible with ``cfg``: the model architecture,
    ``data.seq_len``, ``train.global_batch`` and the ``extra`` dotted keys (keys an older
    config lacks are skipped)."""
    now = cfg.to_dict()
    keys = [f"model.{k}" for k in now["model"] if k not in RUNTIME_MODEL_FIELDS]
    keys += ["data.seq_len", "train.global_batch", *extra]
    return _differing(saved, now, keys)
