"""Orbax checkpoint managers and the small helpers around them: where a run's checkpoints
are, how each item is written, the saved form of the train state, restore targets, and
collectives used while saving (every process's data state; a barrier).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxlm.config import CheckpointConfig
from jaxlm.runtime import quiet

# state: the train state; data: the data pipeline's position (pretraining); progress: the
# objective's own record (fine-tuning: best metric, epochs without improvement, history).
ITEMS = ("state", "data", "progress", "config", "tokenizer")

# Orbax warns whenever a manager is opened read-only, which jaxlm does on purpose to read
# checkpoints it must not change (export, fine-tuning backbones, predict).
logging.getLogger("absl").addFilter(quiet.DropMatching((
    "Given directory is read only",  # and every save between epochs, when the best is tracked:
    "did not provide metrics")))
TMP_MARK = ".orbax-checkpoint-tmp"  # Orbax's suffix for a step not yet committed


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def best_options(metric: str, higher: bool) -> dict[str, Any]:
    """Orbax's own best-checkpoint tracking (``manager.best_step()``) by ``metric``, ties to
    the earliest step (checkpoints are saved with ``{metric: value, "step": step}``)."""
    return {"best_fn": lambda m: (m[metric], -m["step"] if higher else m["step"]),
            "best_mode": "max" if higher else "min"}


def open_manager(directory: Path, ccfg: CheckpointConfig | None = None,
                 best: tuple[str, bool] | None = None) -> ocp.CheckpointManager:
    """An Orbax manager of ``directory``: writable with ``ccfg``'s policies, else read-only.

    ``best = (metric, higher_is_better)`` tracks the best checkpoint by that metric
    (``best_step()``) and, when writable, also keeps it (checkpoints saved without metrics
    are kept only as the latest)."""
    tracking = best_options(*best) if best is not None else {}
    if ccfg is None:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                               save_interval_steps=0, **tracking)
    else:
        keep: list[Any] = [policies.LatestN(ccfg.keep)]
        if ccfg.keep_period:
            keep.append(policies.EveryNSteps(ccfg.keep_period))
        if best is not None:
            keep.append(policies.BestN(get_metric_fn=tracking["best_fn"],
                                       reverse=not best[1], n=1,
                                       keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            enable_async_checkpointing=ccfg.async_save, cleanup_tmp_directories=True,
            **tracking)
    return ocp.CheckpointManager(directory.absolute(), options=options,
                                 item_handlers=item_handlers())


def item_handlers(state: ocp.CheckpointHandler | None = None) -> dict[str, Any]:
    """How each item is written: arrays with Orbax's standard (PyTree) handler, the rest JSON."""
    return {"state": state or ocp.StandardCheckpointHandler(),
            **{name: ocp.JsonCheckpointHandler() for name in ITEMS[1:]}}


STATE_FIELDS = ("step", "params", "opt_state", "rng", "health")


def state_tree(state: Any) -> dict[str, Any]:
    """The train state (a ``TrainState``) as the plain dict that is saved (item ``state``)."""
    return {f: getattr(state, f) for f in STATE_FIELDS}


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with ``shardings``: the restore target, nothing allocated."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able ``obj``, in process order (a collective: all must call)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: raw.size] = raw
    blobs = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(blobs[i, : int(n)].tobytes()) for i, n in enumerate(sizes.reshape(-1))]


def sync(name: str) -> None:
    """A barrier of all processes (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
