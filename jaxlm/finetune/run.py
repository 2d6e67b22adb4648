"""Everything a fine-tuning run is made of, built once: backbone, data, task, mesh, steps.

:func:`setup` resolves the backbone, reads and tokenizes the labeled splits, builds the
classification task on the backbone's architecture, the mesh and the jitted steps, and the
*effective* config saved with the run (the backbone's model and tokenizer, ``train.run_dir``
= ``finetune.run_dir``, ``train.global_batch`` = ``finetune.batch_size``), which is all that
``jaxlm predict`` needs later. :func:`evaluate` computes a split's metrics on the mesh.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from jaxlm.config import Config
from jaxlm.data.errors import DataError
from jaxlm.data.pipeline import check_vocab, to_global
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.finetune.backbone import BackboneSource, backbone_model_config, resolve_backbone
from jaxlm.finetune.batching import (
    batch_length,
    buckets,
    eval_plan,
    local_rows,
    make_batch,
    steps_per_epoch,
)
from jaxlm.finetune.labeled import Encoded, encode, label_names, load_splits
from jaxlm.runtime.distributed import start as start_process
from jaxlm.sharding import Rules, batch_sharding, logical_rules, make_mesh
from jaxlm.tasks import Classification, add_sums
from jaxlm.train.optim import make_finetune_optimizer
from jaxlm.train.state import TrainState, create_train_state
from jaxlm.train.step import jit_train_step, make_eval_step, make_predict_step, make_train_step

LABELS_FILE = "labels.json"
# Settings that make a fine-tuning checkpoint unusable for another run (beyond the model).
COMPAT_KEYS = ("finetune.problem", "finetune.pooling", "finetune.pooler", "finetune.data",
               "finetune.epochs", "finetune.seed")


@dataclasses.dataclass
class FinetuneRun:
    cfg: Config  # the effective config (saved as the run's config.json)
    source: BackboneSource
    task: Classification
    names: list[str]
    splits: dict[str, Encoded]
    origin: dict[str, str]
    mesh: Mesh
    rules: Rules
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state: TrainState
    shardings: TrainState
    batch_sharding: NamedSharding
    train_step: Any
    eval_step: Any
    predict_step: Any
    tokenizer: Any
    sizes: list[int]  # padded lengths (buckets)

    @property
    def primary(self) -> bool:
        return jax.process_index() == 0

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.splits["train"]), self.cfg.finetune.batch_size)

    def global_batch(self, data: Encoded, rows: np.ndarray) -> dict[str, jax.Array]:
        """The global batch of ``rows`` (example indices, -1 = padding): each process builds
        its own share of the rows, padded to the batch's bucket."""
        length = batch_length(data, rows, self.sizes)
        mine = local_rows(rows, jax.process_index(), jax.process_count())
        local = make_batch(data, mine, length, self.task.problem, self.task.num_labels)
        return to_global(local, self.batch_sharding)


def _run_config(cfg: Config) -> Config:
    """``cfg`` with train.run_dir pointing at the fine-tuning run (for logs and checkpoints)."""
    f = cfg.finetune
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={
        "run_dir": f.run_dir, "global_batch": f.batch_size, "grad_accum": 1, "seed": f.seed})})


def setup(cfg: Config, devices: list[Any] | None = None) -> FinetuneRun:
    """Build the run (see the module docstring); every bad input is one error line.
    ``devices`` restricts the mesh to some of the devices (tests)."""
    cfg = _run_config(cfg)
    start_process(cfg, "finetune.run_dir")  # jax.distributed first: nothing may touch devices
    f = cfg.finetune
    source = resolve_backbone(cfg)
    model_cfg = backbone_model_config(source, cfg)
    tokenizer = load_tokenizer(source.tokenizer)
    check_vocab(tokenizer, model_cfg.vocab_size)
    max_len = min(f.max_length or model_cfg.max_seq_len, model_cfg.max_seq_len)

    raw = load_splits(f.data, f.seed)
    names = label_names(raw, f.data, f.problem)
    if f.num_labels is not None and f.problem != "regression" and f.num_labels != len(names):
        raise DataError(f"finetune.num_labels={f.num_labels} but the training data has "
                        f"{len(names)} labels: {', '.join(names[:20])}")
    if f.problem == "single_label" and len(names) < 2:
        raise DataError(f"the training data ({raw.origin['train']}) has only one label "
                        f"({names[0]!r}); classification needs at least two")
    splits = {name: encode(ds, name, raw.origin[name], tokenizer, f.data, f.problem, names,
                           max_len, model_cfg.causal)
              for name, ds in (("train", raw.train), ("validation", raw.validation),
                               ("test", raw.test)) if ds is not None}

    total = f.epochs * steps_per_epoch(len(splits["train"]), f.batch_size)
    f = f.model_copy(update={"pooling": f.pooling or ("last" if model_cfg.causal else "cls")})
    cfg = cfg.model_copy(update={
        "model": model_cfg,
        "finetune": f,
        "data": cfg.data.model_copy(update={"tokenizer": source.tokenizer, "seq_len": max_len,
                                            "mode": "pack" if model_cfg.causal else "mlm"}),
        "train": cfg.train.model_copy(update={"steps": total}),
    })
    mesh = make_mesh(cfg, devices)  # checks finetune.batch_size (train.global_batch) too
    rules = logical_rules(cfg.mesh)
    task = Classification(model_cfg, len(names), f.problem, f.pooling, f.pooler, f.head_dropout)
    abstract_params = jax.eval_shape(lambda r: nn.unbox(task.init(r)), jax.random.PRNGKey(0))
    tx, schedule = make_finetune_optimizer(f, total, model_cfg.n_layers, abstract_params)
    state, shardings = create_train_state(task, tx, mesh, rules, f.seed, abstract=True)
    bs = batch_sharding(mesh, rules)
    step_fn = make_train_step(task, tx, schedule, spike_factor=cfg.train.spike_factor)
    train_step = jit_train_step(step_fn, shardings, bs, mesh, rules)
    eval_step = make_eval_step(task, shardings, bs, mesh, rules)
    predict_step = make_predict_step(task, shardings, bs, mesh, rules)
    return FinetuneRun(cfg, source, task, names, splits, raw.origin, mesh, rules, tx, schedule,
                       state, shardings, bs, train_step, eval_step, predict_step, tokenizer,
                       buckets(max_len))


def evaluate(run: FinetuneRun, params: Any, split: str) -> tuple[dict[str, float], Any]:
    """(metrics, summed counts incl. the confusion matrix) of ``params`` on ``split``."""
    data = run.splits[split]
    totals = None
    for rows in eval_plan(data.lengths, run.cfg.finetune.batch_size):
        totals = add_sums(totals, run.eval_step(params, run.global_batch(data, rows)))
    return run.task.eval_metrics(totals), totals


def write_labels(run: FinetuneRun) -> None:
    """``RUN_DIR/labels.json``: the problem and the label names in id order."""
    if run.primary:
        path = Path(run.cfg.finetune.run_dir) / LABELS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"problem": run.task.problem, "labels": run.names,
                                    "origin": run.origin}, indent=2))
