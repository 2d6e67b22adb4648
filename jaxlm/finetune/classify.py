"""Classification fine-tuning: sequence (single- and multi-label, regression) and token
labels, with a fresh head on a pretrained backbone, run by epochs (:mod:`.epochs`).

The batches are the seeded, length-bucketed plan of :mod:`.batching`; each epoch ends with
the validation split's loss, accuracy and macro-F1 (MAE for regression), and the final report
adds a per-class table (and the confusion matrix to ``report.json``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxlm.finetune.backbone import adapter_report, head_report, load_backbone
from jaxlm.finetune.batching import train_plan
from jaxlm.finetune.run import Labeled, evaluate, write_labels
from jaxlm.models import param_count
from jaxlm.tasks.classification import format_report
from jaxlm.train.state import TrainState, create_train_state, shapes_of
from jaxlm.train.trainer import Fed, Run


def initial_state(run: Run, data: Labeled) -> TrainState:
    """A fresh train state: a new head, and the backbone loaded unless from scratch/none
    (read first, so that only the head is drawn at random)."""
    f = run.cfg.finetune
    if data.source.kind == "none" or f.from_scratch:
        state, _ = create_train_state(run.task, run.tx, run.mesh, run.rules, f.seed,
                                      trainable=run.trainable)
        why = "finetune.from_scratch" if f.from_scratch else "finetune.backbone=none"
        run.log(f"backbone: random initialisation ({why}), architecture of "
                f"{data.source.describe()}")
        run.log(head_report(state.params))
        return state
    params, report = load_backbone(data.source, shapes_of(run.state.params),
                                   run.shardings.params, pooler=f.pooler,
                                   span=f.problem == "span")
    run.log(report)  # ends with the head report
    adapters = adapter_report(params, f.lora)
    if adapters:
        run.log(adapters)
    state, _ = create_train_state(run.task, run.tx, run.mesh, run.rules, f.seed,
                                  trainable=run.trainable, given=params)
    return state


class Classify:
    """The classification objective of :func:`jaxlm.finetune.epochs.run_epochs`."""

    def __init__(self, run: Run, data: Labeled) -> None:
        self.run, self.data, self.origin = run, data, data.origin
        self.per_epoch = -(-len(data.splits["train"]) // run.settings.batch)

    def plan(self, epoch: int) -> list[np.ndarray]:
        f = self.run.cfg.finetune
        return train_plan(self.data.splits["train"].lengths, f.batch_size, f.seed, epoch)

    def feed(self, rows: np.ndarray) -> Fed:
        return Fed(self.data.global_batch(self.run, self.data.splits["train"], rows),
                   int(np.sum(rows >= 0)))

    def initial_state(self) -> TrainState:
        return initial_state(self.run, self.data)

    def prepare(self) -> None:
        write_labels(self.run, self.data)

    def describe(self) -> str:
        run, data, f = self.run, self.data, self.run.cfg.finetune
        sizes = " / ".join(f"{len(d)} {name}" for name, d in data.splits.items())
        labels = ", ".join(data.names[:8]) + (" ..." if len(data.names) > 8 else "")
        return (f"jaxlm finetune: {f.problem} over {len(data.names)} labels ({labels}); "
                f"{run.cfg.model.family} backbone {param_count(run.cfg.model) / 1e6:.2f}M "
                f"params; {sizes} examples; {f.epochs} epochs of {self.per_epoch} steps of "
                f"{f.batch_size}; mesh {dict(run.mesh.shape)}")

    def evaluate(self, params: Any, split: str) -> tuple[dict[str, float], Any]:
        return evaluate(self.run, self.data, params, split)

    def report(self, params: Any, split: str, sums: Any) -> tuple[list[str], dict[str, Any]]:
        more: dict[str, Any] = {"labels": self.data.names}
        if "confusion" not in sums:
            return [], more
        more["confusion"] = np.asarray(sums["confusion"]).astype(int).tolist()
        return [format_report(sums["confusion"], self.data.names)], more
