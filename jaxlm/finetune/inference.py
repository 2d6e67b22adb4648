"""A fine-tuned run's task on the local devices, for ``jaxlm predict`` and ``evaluate``: its
best (or ``--step``'s) parameters on a data-parallel mesh of every device, and its jitted
predict and eval steps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from jaxlm.checkpoint.export import load_params
from jaxlm.finetune.run import best_step
from jaxlm.sharding import batch_sharding, logical_rules, make_mesh
from jaxlm.train.state import abstract_params
from jaxlm.train.step import make_eval_step, make_predict_step


@dataclasses.dataclass
class Loaded:
    """A fine-tuned run's task with its best (or ``step``'s) parameters on a data-parallel
    mesh of every device, and its jitted predict and eval steps."""

    n_dev: int
    mesh: Any
    step: int
    params: Any
    sharding: Any  # of a batch's rows
    predict: Any
    eval: Any

    @classmethod
    def of(cls, run_dir: Path, cfg: Any, task: Any, step: int | None) -> Loaded:
        n_dev = jax.device_count()
        mcfg = cfg.model_copy(update={
            "mesh": cfg.mesh.model_copy(update={"data": -1, "fsdp": 1, "tensor": 1}),
            "train": cfg.train.model_copy(update={"global_batch": n_dev, "grad_accum": 1}),
        })
        mesh = make_mesh(mcfg)
        rules = logical_rules(mcfg.mesh)
        target = abstract_params(task, mesh, rules)  # on that mesh, not allocated
        step = step if step is not None else best_step(run_dir, cfg)
        params = load_params(run_dir / "checkpoints", target, step=step)
        shardings = jax.tree.map(lambda x: x.sharding, target)
        sharding = batch_sharding(mesh, rules)
        return cls(n_dev, mesh, step, params, sharding,
                   make_predict_step(task, shardings, sharding, mesh, rules),
                   make_eval_step(task, shardings, sharding, mesh, rules))
