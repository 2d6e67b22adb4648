"""Using a fine-tuned run: ``jaxlm predict`` (labels and probabilities) and ``jaxlm evaluate``.

:class:`Predictor` rebuilds the run's model from its saved config (backbone architecture,
tokenizer, head) and labels, loads the best checkpoint's parameters (or ``--step``'s) onto
a data-parallel mesh of the local devices, and labels texts in padded, length-bucketed
batches with one jitted forward per bucket.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.config import from_dict
from jaxlm.data.errors import DataError
from jaxlm.data.inputs import jsonl_batches, line_batches
from jaxlm.data.pipeline import to_global
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.errors import UserError
from jaxlm.finetune.answer import Answerer
from jaxlm.finetune.batching import batch_length, buckets, eval_plan, make_batch
from jaxlm.finetune.complete import Completer
from jaxlm.finetune.inference import Loaded
from jaxlm.finetune.labeled import Encoded, _local_files, _read_local, encode, encode_texts
from jaxlm.finetune.run import LABELS_FILE
from jaxlm.runtime.hardware import resolve_auto
from jaxlm.tasks import Classification
from jaxlm.tasks.classification import format_report
from jaxlm.train.trainer import evaluate


def text_batches(texts: list[str], file: str | None, run_dir: str | Path | None = None,
                 jsonl: bool = False, size: int = 64) -> Iterator[list[str]]:
    """Texts from the command line (one batch), else the lines of ``file`` or of stdin,
    ``size`` at a time and blank ones kept (each input gets its output line) — or, with
    ``jsonl`` (or a ``.jsonl`` file), the run's text column (a generative run's prompt
    column) of one JSON object per line. A span run reads JSON objects itself."""
    if texts:
        return iter([texts])
    column, problem = "text", None
    if run_dir is not None and (Path(run_dir) / "config.json").is_file():
        f = json.loads((Path(run_dir) / "config.json").read_text()).get("finetune") or {}
        problem, data = f.get("problem"), f.get("data") or {}
        column = data.get("prompt_column" if problem == "generate" else "text_column", "text")
    if problem != "span" and (jsonl or str(file or "").endswith(".jsonl")):
        return jsonl_batches(file, column, "prompt" if problem == "generate" else "text", size)
    return line_batches(file, "text", size)


class Predictor:
    """A fine-tuned run, loaded for inference (see the module docstring)."""

    def __init__(self, run_dir: Path, cfg: Any, names: list[str], problem: str,
                 step: int | None) -> None:
        cfg = cfg.model_copy(update={"model": resolve_auto(cfg.model)})  # (runs that saved auto)
        self.run_dir, self.cfg, self.names, self.problem = run_dir, cfg, names, problem
        f = cfg.finetune
        self.tokenizer = load_tokenizer(f.tokenizer or cfg.data.tokenizer)
        self.max_length = f.max_length or cfg.data.seq_len  # (runs before the setting)
        self.task = Classification(cfg.model, len(names), problem, f.pooling, f.pooler,
                                   f.head_dropout)
        loaded = Loaded.of(run_dir, cfg, self.task, step)
        self.n_dev, self.mesh, self.step, self.params = (loaded.n_dev, loaded.mesh, loaded.step,
                                                         loaded.params)
        self.sharding, self._predict, self._eval = loaded.sharding, loaded.predict, loaded.eval
        self.sizes = buckets(self.max_length)

    @classmethod
    def load(cls, run_dir: str | Path, step: int | None = None) -> Predictor:
        """The classifier run in ``run_dir``; one-line errors for anything else."""
        path = Path(run_dir)
        if not path.is_dir():
            raise UserError(f"run directory {run_dir} does not exist")
        config_file, labels_file = path / "config.json", path / LABELS_FILE
        if _saved_problem(config_file) in ("generate", "span"):
            raise UserError(f"{run_dir} is a {_saved_problem(config_file)} run, not a "
                            "classifier: load it with jaxlm.finetune.predict.load_run")
        if not labels_file.is_file():
            if config_file.is_file():
                raise UserError(f"{run_dir} is a pretraining run: it has no classification "
                                f"head; fine-tune it first: jaxlm finetune "
                                f"finetune.backbone={run_dir}")
            raise UserError(f"{run_dir} is not a `jaxlm finetune` run directory (no "
                            f"{LABELS_FILE} or config.json)")
        cfg = from_dict(json.loads(config_file.read_text()), objective="finetune")
        labels = json.loads(labels_file.read_text())
        return cls(path, cfg, labels["labels"], labels["problem"], step)

    def _batches(self, data: Encoded, batch_size: int) -> Any:
        size = -(-batch_size // self.n_dev) * self.n_dev  # rows divide over the devices
        for rows in eval_plan(data.lengths, size):
            length = batch_length(data, rows, self.sizes)
            local = make_batch(data, rows, length, self.problem, len(self.names))
            yield rows, to_global(local, self.sharding)

    def probabilities(self, texts: list[str], pairs: list[str] | None = None,
                      batch_size: int = 64) -> np.ndarray:
        """(N, C) class probabilities (multi-label: per class; regression: (N,) values)."""
        ids, types = encode_texts(self.tokenizer, texts, pairs, self.max_length,
                                  self.cfg.model.causal)
        data = Encoded(ids, types, None, texts)
        out: np.ndarray | None = None
        for rows, batch in self._batches(data, batch_size):
            probs = np.asarray(jax.device_get(self._predict(self.params, batch)))
            if out is None:
                out = np.zeros((len(texts), *probs.shape[1:]), probs.dtype)
            keep = rows >= 0
            out[rows[keep]] = probs[keep]
        return out

    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """One row per text: the label and its probability, and every class's score."""
        if self.problem == "token":
            raise UserError("jaxlm predict labels whole texts; this run is token "
                            "classification: use `jaxlm evaluate` on a labeled file")
        probs = self.probabilities(texts, batch_size=batch_size)
        if self.problem == "regression":
            return [{"value": float(v)} for v in probs]
        rows = []
        for p in probs:
            scores = {n: round(float(s), 6) for n, s in zip(self.names, p, strict=True)}
            if self.problem == "multi_label":
                rows.append({"labels": [n for n, s in scores.items() if s >= 0.5],
                             "scores": scores})
            else:
                i = int(np.argmax(p))
                rows.append({"label": self.names[i], "probability": float(p[i]),
                             "scores": scores})
        return rows

    @staticmethod
    def record(text: str, row: dict[str, Any]) -> dict[str, Any]:
        """The ``--json`` line of a prediction."""
        return {"text": text, **row}

    @staticmethod
    def format_row(text: str, row: dict[str, Any]) -> str:
        text = " ".join(text.split())  # one line per input, whatever the text holds
        short = text if len(text) <= 70 else text[:67] + "..."
        if "value" in row:
            return f"{row['value']:.4f}\t{short}"
        if "labels" in row:
            return f"{','.join(row['labels']) or '-'}\t{short}"
        return f"{row['label']}\t{row['probability']:.3f}\t{short}"

    def evaluate_file(self, path: str, batch_size: int = 64) -> tuple[dict[str, float], str]:
        """Metrics (and the per-class report) of this run on a labeled file."""
        d = self.cfg.finetune.data
        files = _local_files(path)
        ds = _read_local(files, "auto")
        if len(ds) == 0:
            raise DataError(f"{path} holds no examples")
        data = encode(ds, "evaluation", path, self.tokenizer, d, self.problem, self.names,
                      self.max_length, self.cfg.model.causal)
        totals = evaluate(self._eval, self.params,
                          (batch for _, batch in self._batches(data, batch_size)))
        metrics = self.task.eval_metrics(totals)
        text = f"{path} (checkpoint step {self.step}): " + ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k != "examples")
        text += f", examples {int(metrics['examples'])}"
        if "confusion" in totals:
            text += "\n" + format_report(totals["confusion"], self.names)
        return metrics, text


def _saved_problem(config_file: Path) -> str | None:
    """``finetune.problem`` of a saved run config (None: none, or not a fine-tuning run)."""
    if not config_file.is_file():
        return None
    try:
        return (json.loads(config_file.read_text()).get("finetune") or {}).get("problem")
    except (OSError, ValueError):
        return None


def load_run(run_dir: str | Path, step: int | None = None) -> Predictor | Completer | Answerer:
    """A fine-tuned run for ``jaxlm predict`` / ``evaluate``: a :class:`Predictor` for a
    classifier, a :class:`~jaxlm.finetune.complete.Completer` for a generative run, an
    :class:`~jaxlm.finetune.answer.Answerer` for extractive QA."""
    path = Path(run_dir)
    config_file = path / "config.json"
    problem = _saved_problem(config_file)
    if problem in ("generate", "span"):
        cfg = from_dict(json.loads(config_file.read_text()), objective="finetune")
        return Completer(path, cfg, step) if problem == "generate" else Answerer(
            path, cfg, step)
    return Predictor.load(run_dir, step)
