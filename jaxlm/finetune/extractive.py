"""Extractive question answering (``finetune.problem=span``): an encoder finds the answer in
the context.

The backbone (BERT family, MiniLM, a jaxlm encoder) gets a fresh start/end head
(:class:`~jaxlm.tasks.SpanExtraction`); the data are question + context windows
(:mod:`.spans`) in the seeded, length-bucketed batches of :mod:`.batching`. Each epoch ends
with the validation windows' loss and the SQuAD exact match / F1 of the best span per
question over all its windows; the final report shows a few answers beside their references.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxlm.config import Config, ConfigError
from jaxlm.data.pipeline import to_global
from jaxlm.finetune.backbone import BackboneSource
from jaxlm.finetune.batching import (
    batch_length,
    buckets,
    eval_plan,
    local_rows,
    steps_per_epoch,
    train_plan,
)
from jaxlm.finetune.classify import initial_state
from jaxlm.finetune.labeled import load_splits
from jaxlm.finetune.run import build_run, resolve, task_for
from jaxlm.finetune.spans import Windows, best_spans, encode_spans, make_span_batch
from jaxlm.finetune.text_metrics import exact_match, token_f1
from jaxlm.models import param_count
from jaxlm.sharding import activate
from jaxlm.train.state import TrainState
from jaxlm.train.step import make_predict_step
from jaxlm.train.trainer import Fed, Run, evaluate

EXAMPLES_SHOWN = 3


@dataclasses.dataclass
class SpanData:
    """The windowed splits and where they came from; ``sizes``: the padded lengths."""

    source: BackboneSource
    splits: dict[str, Windows]
    origin: dict[str, str]
    sizes: list[int]

    def global_batch(self, run: Run, split: str, rows: np.ndarray) -> dict[str, jax.Array]:
        data = self.splits[split]
        length = batch_length(data, rows, self.sizes)
        mine = local_rows(rows, jax.process_index(), jax.process_count())
        return to_global(make_span_batch(data, mine, length), run.batch_sharding)


def setup(cfg: Config, devices: list[Any] | None = None) -> tuple[Run, SpanData]:
    """Build the run and its windows; every bad input is one error line."""
    backbone = resolve(cfg)
    f, max_len = cfg.finetune, backbone.max_length
    if backbone.model.causal:
        raise ConfigError(f"finetune.problem=span needs an encoder backbone (bert, MiniLM); "
                          f"{backbone.source.describe()} is a {backbone.model.family} decoder: "
                          "use finetune.problem=generate to answer in words")
    raw = load_splits(f.data, f.seed)
    splits = {name: encode_spans(ds, name, raw.origin[name], backbone.tokenizer, f.data,
                                 max_len, f.doc_stride, f.missing_answers)
              for name, ds in (("train", raw.train), ("validation", raw.validation),
                               ("test", raw.test)) if ds is not None}
    total = f.epochs * steps_per_epoch(len(splits["train"]), f.batch_size)
    run = build_run(cfg, backbone, task_for(f, backbone.model), total, devices)
    return run, SpanData(backbone.source, splits, raw.origin, buckets(max_len))


class Extract:
    """The extractive QA objective of :func:`jaxlm.finetune.epochs.run_epochs`."""

    def __init__(self, run: Run, data: SpanData) -> None:
        self.run, self.data, self.origin = run, data, data.origin
        self.per_epoch = steps_per_epoch(len(data.splits["train"]), run.settings.batch)
        self._predict: Any = None

    def plan(self, epoch: int) -> list[np.ndarray]:
        f = self.run.cfg.finetune
        return train_plan(self.data.splits["train"].lengths, f.batch_size, f.seed, epoch)

    def feed(self, rows: np.ndarray) -> Fed:
        return Fed(self.data.global_batch(self.run, "train", rows), int(np.sum(rows >= 0)))

    def initial_state(self) -> TrainState:
        return initial_state(self.run, self.data)  # (a fresh head on the backbone)

    def prepare(self) -> None:
        pass

    def describe(self) -> str:
        run, f = self.run, self.run.cfg.finetune
        sizes = " / ".join(f"{len(d.questions)} {name}" for name, d in self.data.splits.items())
        train = self.data.splits["train"]
        return (f"jaxlm finetune: span (extractive QA); {run.cfg.model.family} backbone "
                f"{param_count(run.cfg.model) / 1e6:.2f}M params; {sizes} questions; train "
                f"{len(train)} windows of <= {f.max_length} tokens (doc_stride {f.doc_stride})"
                + (f"; {sum(d.skipped for d in self.data.splits.values())} without their "
                   "answer in the context skipped" if any(d.skipped for d in
                                                          self.data.splits.values()) else "")
                + f"; {f.epochs} epochs of {self.per_epoch} steps of {f.batch_size}; "
                f"mesh {dict(run.mesh.shape)}")

    def answers(self, params: Any, split: str) -> list[tuple[str, float]]:
        """The best span (text, score) per question of ``split``."""
        run, data = self.run, self.data.splits[split]
        if self._predict is None:
            self._predict = make_predict_step(run.task, run.shardings.params,
                                              run.batch_sharding, run.mesh, run.rules)
        logits: list[np.ndarray | None] = [None] * len(data)
        with activate(run.mesh, run.rules):
            for rows in eval_plan(data.lengths, run.settings.batch):
                out = np.asarray(jax.device_get(
                    self._predict(params, self.data.global_batch(run, split, rows))))
                for r, i in enumerate(rows):
                    if i >= 0:
                        logits[i] = out[r, :len(data.ids[i])]
        return best_spans(data, logits, run.cfg.finetune.max_answer_length)

    def evaluate(self, params: Any, split: str) -> tuple[dict[str, float], Any]:
        """Window loss and start/end accuracy, and SQuAD exact match / F1 per question."""
        data = self.data.splits[split]
        plan = eval_plan(data.lengths, self.run.settings.batch)
        batches = (self.data.global_batch(self.run, split, rows) for rows in plan)
        sums = evaluate(self.run.eval_step, params, batches, self.run.bar(f"eval {split}"),
                        len(plan))
        metrics = self.run.task.eval_metrics(sums)
        found = self.answers(params, split)
        metrics["exact_match"] = float(np.mean([max(exact_match(a, r) for r in refs)
                                                for (a, _), refs in zip(found, data.answers,
                                                                        strict=True)]))
        metrics["f1"] = float(np.mean([max(token_f1(a, r) for r in refs)
                                       for (a, _), refs in zip(found, data.answers,
                                                               strict=True)]))
        return metrics, {**sums, "answers": found}

    def report(self, params: Any, split: str, sums: Any) -> tuple[list[str], dict[str, Any]]:
        data, found = self.data.splits[split], sums["answers"]
        lines = [f"examples ({split}): question | answer | reference"]
        for i, (answer, _) in enumerate(found[:EXAMPLES_SHOWN]):
            lines.append(f"  {data.questions[i][:60]!r} | {answer[:60]!r} | "
                         f"{data.answers[i][0][:60]!r}")
        rows = [{"question": q, "answer": a, "score": s, "references": refs}
                for q, (a, s), refs in zip(data.questions, found, data.answers, strict=True)]
        return lines, {"predictions": rows}
