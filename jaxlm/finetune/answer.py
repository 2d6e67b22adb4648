"""Using an extractive QA run: ``jaxlm predict`` (answers) and ``jaxlm evaluate``.

:class:`Answerer` rebuilds the run's span model from its saved config, loads the best
checkpoint (or ``--step``'s) on a data-parallel mesh of the local devices, windows each
question + context as training did (:mod:`.spans`) and returns the best span over the windows
with its score (start + end logit). Inputs to ``predict`` are JSON objects with the run's
question and context columns, one per line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import jax
import numpy as np

from jaxlm.data.errors import DataError
from jaxlm.data.pipeline import to_global
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.finetune.batching import batch_length, buckets, eval_plan
from jaxlm.finetune.inference import Loaded
from jaxlm.finetune.labeled import _local_files, _read_local
from jaxlm.finetune.spans import Windows, best_spans, encode_spans, make_span_batch
from jaxlm.finetune.text_metrics import exact_match, token_f1
from jaxlm.runtime.hardware import resolve_auto
from jaxlm.tasks import SpanExtraction
from jaxlm.train.trainer import evaluate


class Answerer:
    """An extractive QA run, loaded for inference (see the module docstring)."""

    def __init__(self, run_dir: Path, cfg: Any, step: int | None) -> None:
        cfg = cfg.model_copy(update={"model": resolve_auto(cfg.model)})
        self.cfg, f = cfg, cfg.finetune
        self.tokenizer = load_tokenizer(f.tokenizer)
        self.task = SpanExtraction(cfg.model, f.head_dropout)
        self.loaded = Loaded.of(run_dir, cfg, self.task, step)
        self.step, self.sizes = self.loaded.step, buckets(f.max_length)

    def windows(self, ds: Any, where: str, with_answers: bool) -> Windows:
        f = self.cfg.finetune
        return encode_spans(ds, "evaluation", where, self.tokenizer, f.data, f.max_length,
                            f.doc_stride, f.missing_answers, with_answers)

    def _batches(self, data: Windows, batch_size: int) -> Any:
        n = self.loaded.n_dev
        for rows in eval_plan(data.lengths, -(-batch_size // n) * n):
            batch = make_span_batch(data, rows, batch_length(data, rows, self.sizes))
            yield rows, to_global(batch, self.loaded.sharding)

    def answers(self, data: Windows, batch_size: int = 64) -> list[tuple[str, float]]:
        """The best span (text, score) of every question."""
        logits: list[Any] = [None] * len(data)
        for rows, batch in self._batches(data, batch_size):
            out = np.asarray(jax.device_get(self.loaded.predict(self.loaded.params, batch)))
            for r, i in enumerate(rows):
                if i >= 0:
                    logits[i] = out[r, :len(data.ids[i])]
        return best_spans(data, logits, self.cfg.finetune.max_answer_length)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """One row per input (a JSON object with the question and context): the answer and
        its score."""
        d = self.cfg.finetune.data
        rows = []
        for i, text in enumerate(texts):
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if not isinstance(obj, dict) or not {d.question_column, d.context_column} <= set(obj):
                raise DataError(f"input {i + 1} is not a JSON object with {d.question_column!r} "
                                f"and {d.context_column!r}: {text[:60]!r}")
            rows.append({d.question_column: str(obj[d.question_column]),
                         d.context_column: str(obj[d.context_column])})
        data = self.windows(datasets.Dataset.from_list(rows), "the input", with_answers=False)
        return [{"answer": a, "score": round(s, 4)} for a, s in self.answers(data, batch_size)]

    def record(self, text: str, row: dict[str, Any]) -> dict[str, Any]:
        """The ``--json`` line of a prediction: the question with its answer and score."""
        return {"question": json.loads(text)[self.cfg.finetune.data.question_column], **row}

    def format_row(self, text: str, row: dict[str, Any]) -> str:
        question = json.loads(text)[self.cfg.finetune.data.question_column]
        return f"{row['answer']}\t{row['score']:.3f}\t{question[:70]}"

    def evaluate_file(self, path: str, batch_size: int = 64) -> tuple[dict[str, float], str]:
        """Window loss and SQuAD exact match / F1 of this run on a question/context/answers
        file."""
        ds = _read_local(_local_files(path), "auto")
        if len(ds) == 0:
            raise DataError(f"{path} holds no examples")
        data = self.windows(ds, path, with_answers=True)
        metrics = self.task.eval_metrics(evaluate(self.loaded.eval, self.loaded.params,
                                                  (b for _, b in self._batches(data,
                                                                               batch_size))))
        found = self.answers(data, batch_size)
        pairs = list(zip(found, data.answers, strict=True))
        metrics["exact_match"] = float(np.mean([max(exact_match(a, r) for r in refs)
                                                for (a, _), refs in pairs]))
        metrics["f1"] = float(np.mean([max(token_f1(a, r) for r in refs) for (a, _), refs in
                                       pairs]))
        metrics["examples"] = len(data.questions)
        text = f"{path} (checkpoint step {self.step}): " + ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k != "examples")
        return metrics, text + f", examples {len(data.questions)}"
