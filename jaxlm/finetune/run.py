"""Everything a fine-tuning run is made of, built once: backbone, data, task, mesh, steps.

:func:`setup` resolves the backbone, reads and tokenizes the labeled splits, builds the
classification task on the backbone's architecture, the mesh and the jitted steps (a
:class:`~jaxlm.train.trainer.Run`, as pretraining's), and the config saved with the run:
the backbone's ``model`` and the resolved ``finetune.tokenizer`` / ``max_length`` /
``pooling`` (all that ``jaxlm predict`` needs later). ``train.*`` and ``data.*`` are
neither read nor rewritten. :func:`evaluate` computes a split's metrics on the mesh.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxlm.checkpoint.compat import CheckpointError, flat_shapes
from jaxlm.checkpoint.reader import SavedRun
from jaxlm.config import Config, FinetuneConfig, ModelConfig
from jaxlm.config.finetune import GENERATION_METRICS
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
from jaxlm.models import lora
from jaxlm.models.trainable import Trainable, split, trained_part
from jaxlm.runtime.distributed import start as start_process
from jaxlm.runtime.hardware import resolve_auto
from jaxlm.sharding import batch_sharding, logical_rules, make_mesh
from jaxlm.tasks import CausalLM, Classification, SpanExtraction, Task
from jaxlm.train.optim import make_finetune_optimizer
from jaxlm.train.state import create_train_state
from jaxlm.train.step import jit_train_step, make_eval_step, make_train_step
from jaxlm.train.trainer import Run, Settings
from jaxlm.train.trainer import evaluate as evaluate_sums

LABELS_FILE = "labels.json"
# finetune.eval_metric: which way is better (the best checkpoint is tracked by it).
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "loss": False, "mae": False,
                    **dict.fromkeys(GENERATION_METRICS, True)}
# Settings that make a fine-tuning checkpoint unusable for another run (beyond the model).
COMPAT_KEYS = ("finetune.problem", "finetune.pooling", "finetune.pooler", "finetune.data",
               "finetune.epochs", "finetune.seed", "finetune.batch_size", "finetune.max_length",
               "finetune.lora", "finetune.freeze_backbone", "finetune.base")


@dataclasses.dataclass
class Labeled:
    """The fine-tuning data and what was read with it: the backbone it is tokenized for,
    the label names in id order, the encoded splits, where each split came from, and the
    padded lengths (buckets) batches are cut to."""

    source: BackboneSource
    names: list[str]
    splits: dict[str, Encoded]
    origin: dict[str, str]
    sizes: list[int]

    def global_batch(self, run: Run, data: Encoded, rows: np.ndarray) -> dict[str, jax.Array]:
        """The global batch of ``rows`` (example indices, -1 = padding): each process builds
        its own share of the rows, padded to the batch's bucket."""
        length = batch_length(data, rows, self.sizes)
        mine = local_rows(rows, jax.process_index(), jax.process_count())
        local = make_batch(data, mine, length, run.task.problem, run.task.num_labels)
        return to_global(local, run.batch_sharding)


def settings(f: FinetuneConfig, total: int) -> Settings:
    """The loop's settings, from ``finetune.*`` alone."""
    return Settings("finetune", Path(f.run_dir), total, f.batch_size, f.seed, f.lr, f.clip_norm)


@dataclasses.dataclass
class Backbone:
    """What a fine-tuning run starts from, resolved for this machine: where the weights are,
    the architecture (runtime settings applied, ``auto`` resolved), the tokenizer (and the
    name recorded for it) and the token budget per example."""

    source: BackboneSource
    model: ModelConfig
    tokenizer: Any
    tokenizer_name: str
    max_length: int


def resolve(cfg: Config) -> Backbone:
    """Start the process (jax.distributed first: nothing may touch devices before) and
    resolve ``finetune.backbone``, its tokenizer and ``finetune.max_length``."""
    start_process(cfg, "finetune.run_dir")
    return backbone_of(cfg)


def backbone_of(cfg: Config) -> Backbone:
    """``finetune.backbone`` resolved (its architecture for this machine, its tokenizer,
    ``finetune.max_length``), without starting a run (``jaxlm plan`` reads it too)."""
    f = cfg.finetune
    source = resolve_backbone(cfg)
    model_cfg = resolve_auto(backbone_model_config(source, cfg))  # auto: for this machine
    model_cfg = model_cfg.model_copy(update={"lora": f.lora})  # adapters: this run's own
    tokenizer_name = f.tokenizer or source.tokenizer
    tokenizer = load_tokenizer(tokenizer_name)
    check_vocab(tokenizer, model_cfg.vocab_size)
    max_len = min(f.max_length or model_cfg.max_seq_len, model_cfg.max_seq_len)
    return Backbone(source, model_cfg, tokenizer, tokenizer_name, max_len)


def task_for(f: FinetuneConfig, model: ModelConfig, num_labels: int = 2) -> Task:
    """The objective of ``finetune.problem`` on ``model``: the LM itself (generate), a span
    head (span) or a classification head over ``num_labels`` (pooling: ``finetune.pooling``,
    else the first token for encoders and the last for decoders)."""
    if f.problem == "generate":
        return CausalLM(model)
    if f.problem == "span":
        return SpanExtraction(model, f.head_dropout)
    pooling = f.pooling or ("last" if model.causal else "cls")
    return Classification(model, num_labels, f.problem, pooling, f.pooler, f.head_dropout)


def trainable_of(f: FinetuneConfig) -> Trainable | None:
    """Which parameters the run trains: with LoRA the adapters and the task head (the
    backbone, and a decoder's LM head, stay frozen); with ``freeze_backbone`` all but the
    backbone; otherwise all (None)."""
    if f.lora.rank:
        return Trainable(lambda p: lora.is_adapter(p) or p.split("/")[0] == "head",
                         f.lora.base_dtype)
    if f.freeze_backbone:
        return Trainable(lambda p: p.split("/")[0] != "backbone")
    return None


def base_of(source: BackboneSource) -> str:
    """Where a run's frozen parameters are read back from: the backbone's exact checkpoint
    step (a run that goes on training later must not change them), export or directory."""
    path = Path(source.path).absolute()
    return str(path / str(source.step)) if source.kind == "checkpoint" else str(path)


def build_run(cfg: Config, backbone: Backbone, task: Task, total: int,
              devices: list[Any] | None = None, **resolved: Any) -> Run:
    """The run of ``task`` for ``total`` steps on the mesh: optimizer, abstract state, jitted
    steps. ``resolved``: ``finetune.*`` values decided at set-up, recorded in the run's
    config.json with the backbone's model and tokenizer (what later verbs read back) — among
    them which parameter subtrees stay frozen and the backbone they are read from."""
    trainable = trainable_of(cfg.finetune)
    abstract_params = jax.eval_shape(lambda r: nn.unbox(task.init(r)), jax.random.PRNGKey(0))
    if cfg.finetune.lora.rank:
        shapes = flat_shapes(abstract_params)
        lora.check_targets(shapes, cfg.finetune.lora)
        lora.check_rank(shapes, cfg.finetune.lora)
    if trainable is not None:
        frozen = sorted(split(abstract_params, trainable)[1])
        resolved.update(frozen=frozen, base=base_of(backbone.source))
    f = cfg.finetune.model_copy(update={"tokenizer": backbone.tokenizer_name,
                                        "max_length": backbone.max_length, **resolved})
    cfg = cfg.model_copy(update={"model": backbone.model, "finetune": f})
    mesh = make_mesh(cfg, devices, batch=("finetune.batch_size", f.batch_size))
    rules = logical_rules(cfg.mesh)
    tx, schedule = make_finetune_optimizer(f, total, backbone.model.n_layers,
                                           trained_part(abstract_params, trainable))
    state, shardings = create_train_state(task, tx, mesh, rules, f.seed, abstract=True,
                                          trainable=trainable)
    bs = batch_sharding(mesh, rules)
    step_fn = make_train_step(task, tx, schedule, spike_factor=cfg.train.spike_factor,
                              trainable=trainable)
    train_step = jit_train_step(step_fn, shardings, bs, mesh, rules)
    eval_step = make_eval_step(task, shardings.params, bs, mesh, rules)
    return Run(cfg, settings(f, total), mesh, rules, task, tx, schedule, state, shardings, bs,
               train_step, eval_step, backbone.tokenizer, trainable)


def setup(cfg: Config, devices: list[Any] | None = None) -> tuple[Run, Labeled]:
    """Build a classification run and its data (see the module docstring); every bad input
    is one error line. ``devices`` restricts the mesh to some of the devices (tests)."""
    backbone = resolve(cfg)
    f, model_cfg, max_len = cfg.finetune, backbone.model, backbone.max_length
    raw = load_splits(f.data, f.seed)
    names = label_names(raw, f.data, f.problem)
    if f.num_labels is not None and f.problem != "regression" and f.num_labels != len(names):
        raise DataError(f"finetune.num_labels={f.num_labels} but the training data has "
                        f"{len(names)} labels: {', '.join(names[:20])}")
    if f.problem == "single_label" and len(names) < 2:
        raise DataError(f"the training data ({raw.origin['train']}) has only one label "
                        f"({names[0]!r}); classification needs at least two")
    splits = {name: encode(ds, name, raw.origin[name], backbone.tokenizer, f.data, f.problem,
                           names, max_len, model_cfg.causal)
              for name, ds in (("train", raw.train), ("validation", raw.validation),
                               ("test", raw.test)) if ds is not None}
    total = f.epochs * steps_per_epoch(len(splits["train"]), f.batch_size)
    task = task_for(f, model_cfg, len(names))
    run = build_run(cfg, backbone, task, total, devices, pooling=task.pooling)
    return run, Labeled(backbone.source, names, splits, raw.origin, buckets(max_len))


def evaluate(run: Run, data: Labeled, params: Any, split: str) -> tuple[dict[str, float], Any]:
    """(metrics, summed counts incl. the confusion matrix) of ``params`` on ``split``."""
    encoded = data.splits[split]
    plan = eval_plan(encoded.lengths, run.settings.batch)
    batches = (data.global_batch(run, encoded, rows) for rows in plan)
    totals = evaluate_sums(run.eval_step, params, batches, run.bar(f"eval {split}"), len(plan))
    return run.task.eval_metrics(totals), totals


def best_step(run_dir: Path, cfg: Any) -> int:
    """The best checkpoint of the run, as Orbax tracked it by ``finetune.eval_metric``
    (runs saved before the ``progress`` item: the best step their data item recorded); the
    latest when no epoch has ended yet."""
    metric = cfg.finetune.eval_metric
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        steps: list[int] = []
    else:
        run = SavedRun(directory, best=(metric, HIGHER_IS_BETTER[metric]))
        steps = run.steps()
    if not steps:
        raise CheckpointError(f"{run_dir} has no complete checkpoint yet; run `jaxlm finetune` "
                              "to the end of an epoch first")
    with run:
        best = run.best_step()
        if run.json_item(steps[-1], "progress") is None:  # an older run
            best = run.json_item(steps[-1], "data")["states"][0].get("best_step")
    return best if best in steps else steps[-1]


def write_labels(run: Run, data: Labeled) -> None:
    """``RUN_DIR/labels.json``: the problem and the label names in id order."""
    if run.primary:
        path = run.settings.run_dir / LABELS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"problem": run.task.problem, "labels": data.names,
                                    "origin": data.origin}, indent=2))
