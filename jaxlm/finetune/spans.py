"""Question + context examples for extractive QA: windows, answer positions, best spans.

An example is ``[CLS] question [SEP] context [SEP]`` (token types 0 / 1). A context longer
than ``max_length`` leaves is split into overlapping windows (consecutive windows share
``finetune.doc_stride`` tokens, as Hugging Face's ``doc_stride``), each a row of its own. The
answer's characters are mapped to tokens through the tokenizer's offsets: a window that holds
the whole answer is labeled with its start and end positions, any other window with
``[CLS]`` (0, 0): "not here". At prediction time the best span over all of an example's windows
wins: the highest start + end logit with start <= end, at most ``finetune.max_answer_length``
tokens, both inside the context; its text is cut from the context by the offsets.

Answers are SQuAD's ``{"text": [...], "answer_start": [...]}``, a list of strings or one
string (found in the context); every answer text is a reference for exact match / F1. An
answer that does not occur in its context is counted and skipped with a warning, or refused
(``finetune.missing_answers``).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from jaxlm.config import LabeledDataConfig
from jaxlm.data.errors import DataError, DataWarning
from jaxlm.finetune.labeled import column, frame_ids

TOP = 20  # start / end candidates per window considered for the best span


@dataclasses.dataclass
class Windows:
    """A tokenized split: its rows (windows) and, per example, the texts and answers."""

    ids: list[np.ndarray]  # (n_w,) int32 per window
    types: list[np.ndarray]  # (n_w,) int32
    masks: list[np.ndarray]  # (n_w,) int32: 1 where an answer may start/end ([CLS], context)
    offsets: list[np.ndarray]  # (n_w, 2) char offsets into the context; -1 off the context
    example: np.ndarray  # (W,) the example of each window
    labels: np.ndarray  # (W, 2) start, end positions (0, 0: the answer is not in the window)
    questions: list[str]
    contexts: list[str]
    answers: list[list[str]]  # reference texts per example
    skipped: int  # examples left out: the answer does not occur in the context

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(i) for i in self.ids), np.int64, len(self.ids))


def _answers(value: Any, context: str) -> list[tuple[str, int]]:
    """(text, character start) of each answer; start -1 where it does not occur."""
    if isinstance(value, dict):
        texts = value.get("text") or []
        starts = value.get("answer_start") or [None] * len(texts)
        pairs = list(zip(texts, starts, strict=False))
    elif isinstance(value, (list, tuple)):
        pairs = [(t, None) for t in value]
    else:
        pairs = [(value, None)]
    out = []
    for text, start in pairs:
        text = "" if text is None else str(text)
        if start is None or context[int(start):int(start) + len(text)] != text:
            start = context.find(text) if text else -1
        out.append((text, int(start)))
    return out


def encode_spans(ds: Any, split: str, origin: str, tokenizer: Any, d: LabeledDataConfig,
                 max_length: int, doc_stride: int, missing: str = "skip",
                 with_answers: bool = True) -> Windows:
    """Tokenize a split into windows with answer positions (see the module docstring);
    ``with_answers=False``: questions to answer (no answer column, every window (0, 0))."""
    questions = [str(q or "") for q in column(ds, d.question_column, split, origin,
                                              "question_column")]
    contexts = [str(c or "") for c in column(ds, d.context_column, split, origin,
                                             "context_column")]
    raw = (column(ds, d.answers_column, split, origin, "answers_column") if with_answers
           else [None] * len(questions))
    cls_id, sep_id = frame_ids(tokenizer)
    enc = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    q_enc = enc(questions, add_special_tokens=False)
    c_enc = tokenizer.encode_batch(contexts, add_special_tokens=False)  # (offsets needed)
    out = Windows([], [], [], [], np.zeros(0, np.int64), np.zeros((0, 2), np.int64), [], [],
                  [], 0)
    example, labels, missing_rows = [], [], []
    for r, (q, c) in enumerate(zip(q_enc, c_enc, strict=True)):
        answers = _answers(raw[r], contexts[r]) if with_answers else []
        found = [(t, s) for t, s in answers if t and s >= 0]
        if with_answers and not found:
            missing_rows.append(r)
            continue
        text, char_start = found[0] if found else ("", -1)
        char_end = char_start + len(text)
        q_ids = q.ids[:max(1, max_length // 2)]
        budget = max_length - len(q_ids) - 3
        if budget < 1:
            raise DataError(f"finetune.max_length={max_length} leaves no room for the context "
                            f"beside the question of row {r}; raise max_length")
        offs = np.asarray(c.offsets, np.int64).reshape(-1, 2)
        first, last = -1, -1  # the answer's first and last context token
        if found and len(offs):
            first = int(np.argmax(offs[:, 1] > char_start))
            last = int(np.flatnonzero(offs[:, 0] < char_end)[-1])
        n, step, start, i = len(c.ids), max(1, budget - doc_stride), 0, len(out.questions)
        out.questions.append(questions[r])
        out.contexts.append(contexts[r])
        out.answers.append([t for t, _ in answers if t])
        while True:
            window = slice(start, min(start + budget, n))
            head = 2 + len(q_ids)  # [CLS] question [SEP]
            ids = [cls_id, *q_ids, sep_id, *c.ids[window], sep_id]
            length = len(ids)
            out.ids.append(np.asarray(ids, np.int32))
            out.types.append(np.asarray([0] * head + [1] * (length - head), np.int32))
            mask = np.zeros(length, np.int32)
            mask[0] = 1
            mask[head:length - 1] = 1
            out.masks.append(mask)
            o = np.full((length, 2), -1, np.int64)
            o[head:length - 1] = offs[window]
            out.offsets.append(o)
            inside = found and window.start <= first and last < window.stop
            labels.append((first - start + head, last - start + head) if inside else (0, 0))
            example.append(i)
            if window.stop >= n:
                break
            start += step
    if missing_rows:
        what = (f"the {split} split ({origin}) has {len(missing_rows)} example(s) whose answer "
                f"does not occur in its context (first: row {missing_rows[0]})")
        if missing == "refuse":
            raise DataError(f"{what}; fix them, or set finetune.missing_answers=skip")
        warnings.warn(f"{what}: skipped", DataWarning, stacklevel=2)
    if not out.questions:
        raise DataError(f"the {split} split ({origin}) has no example whose answer occurs in "
                        "its context")
    out.example = np.asarray(example, np.int64)
    out.labels = np.asarray(labels, np.int64).reshape(-1, 2)
    out.skipped = len(missing_rows)
    return out


def make_span_batch(data: Windows, rows: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Arrays of the given windows (-1 = a padding row of weight 0), padded to ``length``."""
    b = len(rows)
    inputs, types, seg, mask = (np.zeros((b, length), np.int32) for _ in range(4))
    labels = np.zeros((b, 2), np.int32)
    weights = np.zeros(b, np.float32)
    for r, i in enumerate(rows):
        if i < 0:
            mask[r, 0] = 1  # (a valid position, so the padding row's softmax is finite)
            continue
        n = len(data.ids[i])
        inputs[r, :n], types[r, :n], seg[r, :n], mask[r, :n] = (data.ids[i], data.types[i], 1,
                                                                data.masks[i])
        labels[r], weights[r] = data.labels[i], 1.0
    return {"inputs": inputs, "segment_ids": seg, "token_types": types, "span_mask": mask,
            "labels": labels, "weights": weights}


def best_spans(data: Windows, logits: list[np.ndarray],
               max_answer_length: int) -> list[tuple[str, float]]:
    """Per example, the best answer over its windows (see the module docstring) and its score
    (start + end logit); ``logits[w]`` is window w's (n_w, 2)."""
    best: list[tuple[str, float]] = [("", float("-inf"))] * len(data.questions)
    for w, lg in enumerate(logits):
        e, offs, mask = int(data.example[w]), data.offsets[w], data.masks[w].copy()
        mask[0] = 0  # [CLS] is "not here", never an answer
        start, end = np.where(mask > 0, lg[:, 0], -np.inf), np.where(mask > 0, lg[:, 1], -np.inf)
        for i in np.argsort(-start)[:TOP]:
            for j in np.argsort(-end)[:TOP]:
                if not (mask[i] and mask[j] and i <= j < i + max_answer_length):
                    continue
                score = float(start[i] + end[j])
                if score > best[e][1]:
                    best[e] = (data.contexts[e][offs[i, 0]:offs[j, 1]].strip(), score)
    return best
