"""Classification objectives for fine-tuning: a backbone with a task head.

``problem`` picks the head and the loss:

- ``single_label``: one class per text; softmax cross-entropy; accuracy, macro-F1 and a
  confusion matrix (rows = true class, columns = predicted).
- ``multi_label``: any subset of the classes; per-class sigmoid and binary cross-entropy;
  exact-match accuracy and macro-F1 over classes.
- ``regression``: one number per text; mean squared error; MAE.
- ``token``: one class per token (e.g. tagging); cross-entropy over the tokens that carry a
  label; accuracy, macro-F1 and a confusion matrix.

Batches: ``inputs``, ``segment_ids`` (1 on text, 0 on padding), ``token_types`` (0 text,
1 text_pair) all (B, L) int32; ``labels`` (B,) int32 / (B, C) f32 / (B,) f32 / (B, L) int32;
``weights`` (B,) f32 — 0 for rows that only pad the batch — or (B, L) for ``token``.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.config import ModelConfig
from jaxlm.models import SequenceClassifier, TokenClassifier
from jaxlm.models.heads import Pooling
from jaxlm.tasks.base import Batch, Sums, Task

Problem = Literal["single_label", "multi_label", "regression", "token"]
PROBLEMS: tuple[str, ...] = ("single_label", "multi_label", "regression", "token")


class Classification(Task):
    """Fine-tuning objective over a backbone with a fresh head (see the module docstring)."""

    model_keys = ("inputs", "segment_ids", "token_types")

    def __init__(self, cfg: ModelConfig, num_labels: int, problem: Problem = "single_label",
                 pooling: Pooling = "cls", pooler: bool = False, dropout: float = 0.1) -> None:
        self.cfg, self.problem, self.pooling = cfg, problem, pooling
        self.num_labels = 1 if problem == "regression" else num_labels
        if problem == "token":
            self.model = TokenClassifier(cfg, self.num_labels, dropout)
        else:
            self.model = SequenceClassifier(cfg, self.num_labels, pooling, pooler, dropout)

    def dummy_batch(self, rows: int = 1, length: int | None = None) -> dict[str, np.ndarray]:
        shape = (rows, length or min(self.init_len, self.cfg.max_seq_len))
        labels: np.ndarray = {
            "single_label": np.zeros(rows, np.int32),
            "multi_label": np.zeros((rows, self.num_labels), np.float32),
            "regression": np.zeros(rows, np.float32),
            "token": np.zeros(shape, np.int32),
        }[self.problem]
        return {"inputs": np.zeros(shape, np.int32), "segment_ids": np.ones(shape, np.int32),
                "token_types": np.zeros(shape, np.int32), "labels": labels,
                "weights": np.ones(shape if self.problem == "token" else rows, np.float32)}

    # ------------------------------------------------------------------------------- loss

    def loss_sums(self, params: Any, batch: Batch,
                  rng: jax.Array | None = None) -> tuple[jax.Array, Sums]:
        logits = self.apply(params, batch, rng)  # (B, C) or (B, L, C) f32
        y, w = batch["labels"], batch["weights"]
        if self.problem == "regression":
            err = logits[:, 0] - y  # (B,)
            sums = {"loss": jnp.sum(jnp.square(err) * w), "abs_error": jnp.sum(jnp.abs(err) * w)}
        elif self.problem == "multi_label":
            bce = optax.sigmoid_binary_cross_entropy(logits, y).mean(-1)  # (B,)
            pred, true = logits > 0, y > 0.5  # (B, C)
            wc = w[:, None]
            sums = {"loss": jnp.sum(bce * w),
                    "correct": jnp.sum(jnp.all(pred == true, axis=-1) * w),
                    "tp": jnp.sum((pred & true) * wc, 0), "fp": jnp.sum((pred & ~true) * wc, 0),
                    "fn": jnp.sum((~pred & true) * wc, 0)}
        else:  # single_label, token: softmax cross-entropy
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)  # (B,) | (B, L)
            pred = jnp.argmax(logits, -1)
            c = self.num_labels
            onehot_true = jax.nn.one_hot(y, c) * w[..., None]  # (..., C)
            onehot_pred = jax.nn.one_hot(pred, c)
            confusion = jnp.einsum("...t,...p->tp", onehot_true, onehot_pred)  # (C, C)
            sums = {"loss": jnp.sum(nll * w), "correct": jnp.sum((pred == y) * w),
                    "confusion": confusion}
        sums["weight"] = jnp.sum(w)
        return sums["loss"], sums

    def predict(self, params: Any, batch: Batch) -> jax.Array:
        """Probabilities (softmax, or per-class sigmoid), or the predicted value (regression)."""
        logits = self.apply(params, batch)
        if self.problem == "regression":
            return logits[:, 0]
        if self.problem == "multi_label":
            return jax.nn.sigmoid(logits)
        return jax.nn.softmax(logits, axis=-1)

    # ---------------------------------------------------------------------------- metrics

    def train_metrics(self, sums: Sums) -> dict[str, jax.Array]:
        denom = jnp.maximum(sums["weight"], 1.0)
        out = {"loss": sums["loss"] / denom, "examples": sums["weight"]}
        if self.problem == "regression":
            out["mae"] = sums["abs_error"] / denom
        else:
            out["accuracy"] = sums["correct"] / denom
        return out

    def eval_metrics(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        n = max(float(sums["weight"]), 1.0)
        out = {"loss": float(sums["loss"]) / n, "examples": float(sums["weight"])}
        if self.problem == "regression":
            out["mae"] = float(sums["abs_error"]) / n
            return out
        out["accuracy"] = float(sums["correct"]) / n
        if self.problem == "multi_label":
            out["macro_f1"] = float(np.mean(f1(sums["tp"], sums["fp"], sums["fn"])))
        else:
            out["macro_f1"] = macro_f1(sums["confusion"])
        return out


# ------------------------------------------------------------------------------ reports


def f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2·tp / (2·tp + fp + fn); 0 where a class was never true nor predicted."""
    tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(confusion: np.ndarray) -> float:
    """Unweighted mean F1 over the classes of a confusion matrix (true × predicted)."""
    cm = np.asarray(confusion, np.float64)
    tp = np.diag(cm)
    return float(np.mean(f1(tp, cm.sum(0) - tp, cm.sum(1) - tp)))


def class_report(confusion: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """Per class: precision, recall, F1 and support (true count), from a confusion matrix."""
    cm = np.asarray(confusion, np.float64)
    tp, predicted, support = np.diag(cm), cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    scores = f1(tp, predicted - tp, support - tp)
    return [{"label": name, "precision": float(p), "recall": float(r), "f1": float(s),
             "support": int(n)} for name, p, r, s, n in zip(names, precision, recall, scores,
                                                           support, strict=True)]


MATRIX_MAX = 10  # classes up to which the whole confusion matrix is printed
TOP_CONFUSIONS = 10


def format_report(confusion: np.ndarray, names: list[str]) -> str:
    """The per-class table and the confusion counts, as printed at the end of fine-tuning:
    the whole matrix up to ``MATRIX_MAX`` classes, else the most frequent confusions (the
    matrix is in ``report.json``)."""
    rows = class_report(confusion, names)
    width = min(max(8, *(len(n) for n in names)), 32)
    lines = [f"{'label':<{width}}  precision  recall     f1  support"]
    lines += [f"{r['label'][:width]:<{width}}  {r['precision']:9.3f}  {r['recall']:6.3f}  "
              f"{r['f1']:5.3f}  {r['support']:7d}" for r in rows]
    cm = np.asarray(confusion).astype(int)
    if len(names) > MATRIX_MAX:
        off = [(int(cm[i, j]), i, j) for i in range(len(names)) for j in range(len(names))
               if i != j and cm[i, j] > 0]
        top = sorted(off, key=lambda t: (-t[0], t[1], t[2]))[:TOP_CONFUSIONS]
        lines += ["", f"most frequent confusions ({len(off)} pairs; the whole {len(names)} x "
                  f"{len(names)} matrix is in report.json)"]
        lines += [f"{n:>5d}  {names[i][:width]} -> {names[j][:width]}" for n, i, j in top]
        return "\n".join(lines)
    lines += ["", "confusion (rows: true, columns: predicted)",
              " " * (width + 2) + " ".join(f"{i:>5d}" for i in range(len(names)))]
    lines += [f"{i:>2d} {name[:width - 1]:<{width - 1}} " + " ".join(f"{v:>5d}" for v in row)
              for i, (name, row) in enumerate(zip(names, cm, strict=True))]
    return "\n".join(lines)
