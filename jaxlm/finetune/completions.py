"""Prompt → completion examples for generative fine-tuning: tokenized, masked, packed.

An example is ``[BOS] prompt completion [EOS]`` — the prompt tokenized alone, as ``jaxlm
generate`` tokenizes it, so the model learns to continue exactly what it will be given, and
EOS ends every completion (generation stops there). The loss covers the completion and its
EOS only (``finetune.loss_on_prompt`` adds the prompt). A prompt too long for the context
loses its beginning (``finetune.prompt_truncation=left``) or is refused (``refuse``); a
completion that does not fit even after the whole prompt is gone is an error either way.

Examples are packed, whole, into rows of ``max_length`` tokens (best fit, longest first): each
example is its own segment (``segment_ids`` 1, 2, ... per row; 0 = padding), with positions
restarting at 0, so attention never crosses from one example into another and each is seen as
if alone. The packing is fixed for a run (seeded); each epoch visits its rows in a seeded
order, so a resumed run is back at the same batch from the step alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxlm.config import LabeledDataConfig
from jaxlm.data.errors import DataError
from jaxlm.data.tokenizer import special_ids
from jaxlm.finetune.chat import DEFAULT, render
from jaxlm.finetune.labeled import column

_TAG = 11  # RNG stream tag of the generative fine-tuning order


@dataclasses.dataclass
class Completions:
    """A tokenized split: per example ``[BOS] prompt completion [EOS]`` ids and the number of
    leading tokens (BOS + prompt) that carry no loss, plus the texts (for reports)."""

    ids: list[np.ndarray]  # (n_i,) int32
    prompt_lens: np.ndarray  # (N,) int: BOS + prompt tokens (after truncation)
    prompts: list[str]
    completions: list[str]
    truncated: int  # prompts that lost their beginning
    model_prompts: list[str]  # the prompts as the model sees them (cut ones decoded)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens each example occupies in a row (inputs: ids minus the last)."""
        return np.fromiter((len(i) - 1 for i in self.ids), np.int64, len(self.ids))


def encode_completions(ds: Any, split: str, origin: str, tokenizer: Any,
                       d: LabeledDataConfig, max_length: int, truncation: str = "left",
                       template: str = DEFAULT) -> Completions:
    """Tokenize a split's prompt and completion columns, or its conversations rendered by
    ``template`` (:mod:`.chat`) when ``d.messages_column`` is set (see the module
    docstring)."""
    if d.messages_column is not None:
        rendered = [render(m, template, f"the {split} split ({origin}) row {r}",
                           specials_text(tokenizer))
                    for r, m in enumerate(column(ds, d.messages_column, split, origin,
                                                 "messages_column"))]
        prompts, completions = [p for p, _ in rendered], [c for _, c in rendered]
    else:
        prompts = [_text(p) for p in column(ds, d.prompt_column, split, origin,
                                            "prompt_column")]
        completions = [_text(c) for c in column(ds, d.completion_column, split, origin,
                                                "completion_column")]
    ids_of = special_ids(tokenizer)
    bos = ids_of.bos if ids_of.bos is not None else ids_of.eos
    eos = ids_of.eos
    if eos is None:
        raise DataError("finetune.problem=generate needs a tokenizer with an end-of-text token "
                        "to end completions with")
    empty = [i for i, c in enumerate(completions) if not c.strip()]
    if empty:
        raise DataError(f"the {split} split ({origin}) has {len(empty)} empty completion(s) "
                        f"(first: row {empty[0]}, column {d.completion_column!r}); every "
                        "example needs text to learn")
    enc = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    p_ids = [e.ids for e in enc(prompts, add_special_tokens=False)]
    c_ids = [e.ids for e in enc(completions, add_special_tokens=False)]
    ids, prompt_lens, truncated, seen = [], [], 0, list(prompts)
    budget = max_length + 1  # a row holds max_length inputs: the sequence is one longer
    for r, (p, c) in enumerate(zip(p_ids, c_ids, strict=True)):
        room = budget - len(c) - 2  # prompt tokens that fit beside BOS, completion, EOS
        if room < 0:
            raise DataError(f"the {split} split ({origin}) row {r}: its completion is "
                            f"{len(c)} tokens, more than finetune.max_length={max_length} "
                            "leaves (with BOS and EOS); raise max_length or shorten it")
        if len(p) > room:
            if truncation == "refuse":
                raise DataError(f"the {split} split ({origin}) row {r}: prompt and completion "
                                f"are {len(p) + len(c) + 2} tokens, more than "
                                f"finetune.max_length={max_length} + 1; set "
                                "finetune.prompt_truncation=left to drop the prompt's "
                                "beginning, or raise max_length")
            p, truncated = p[len(p) - room:], truncated + 1
            seen[r] = tokenizer.decode(p)
        ids.append(np.asarray([bos, *p, *c, eos], np.int32))
        prompt_lens.append(1 + len(p))
    return Completions(ids, np.asarray(prompt_lens, np.int64), prompts, completions, truncated,
                       seen)


def specials_text(tokenizer: Any) -> dict[str, str]:
    """``bos_token`` / ``eos_token`` as text, for chat templates that use them."""
    ids = special_ids(tokenizer)
    return {name: tokenizer.id_to_token(i) for name, i in (("bos_token", ids.bos),
                                                           ("eos_token", ids.eos))
            if i is not None}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def pack_rows(lengths: np.ndarray, max_length: int, seed: int) -> list[list[int]]:
    """Examples (by index) packed whole into rows of ``max_length`` tokens: best fit, longest
    first (ties in a seeded order), so rows are full and every process computes the same."""
    rng = np.random.default_rng([seed, _TAG])
    order = rng.permutation(len(lengths))
    order = order[np.argsort(-lengths[order], kind="stable")]
    rows: list[list[int]] = []
    free = np.zeros(0, np.int64)
    for i in order:
        n = int(lengths[i])
        fits = np.flatnonzero(free >= n)
        if len(fits):
            r = int(fits[np.argmin(free[fits])])
            rows[r].append(int(i))
            free[r] -= n
        else:
            rows.append([int(i)])
            free = np.append(free, max_length - n)
    return rows


def padded_rows(n: int) -> list[list[int]]:
    """One example per row (``finetune.packing=false``: the baseline packing is measured
    against)."""
    return [[i] for i in range(n)]


def epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The order an epoch visits the packed rows in."""
    return np.random.default_rng([seed, epoch, _TAG]).permutation(n_rows)


def make_rows(data: Completions, rows: list[list[int]], length: int,
              loss_on_prompt: bool) -> dict[str, np.ndarray]:
    """The arrays of packed ``rows`` (each a list of example indices; [] = an empty row of
    weight 0), every row ``length`` tokens: what :class:`~jaxlm.tasks.CausalLM` trains on.

    ``weights`` is 1 where the *target* is a completion token or the final EOS (every target
    with ``loss_on_prompt``), 0 on prompt targets and padding.
    """
    b = len(rows)
    inputs = np.zeros((b, length), np.int32)
    targets = np.zeros((b, length), np.int32)
    positions = np.zeros((b, length), np.int32)
    segments = np.zeros((b, length), np.int32)
    weights = np.zeros((b, length), np.float32)
    for r, examples in enumerate(rows):
        at = 0
        for s, i in enumerate(examples, start=1):
            seq = data.ids[i]
            n = len(seq) - 1
            inputs[r, at:at + n], targets[r, at:at + n] = seq[:-1], seq[1:]
            positions[r, at:at + n] = np.arange(n)
            segments[r, at:at + n] = s
            # target t is token t + 1: it is the completion's from t = prompt_len - 1 on
            first = 0 if loss_on_prompt else int(data.prompt_lens[i]) - 1
            weights[r, at + first:at + n] = 1.0
            at += n
    return {"inputs": inputs, "targets": targets, "positions": positions,
            "segment_ids": segments, "weights": weights}


def padding_waste(data: Completions, rows: list[list[int]], length: int) -> float:
    """The fraction of the rows' token slots that are padding."""
    used = sum(int(data.lengths[i]) for row in rows for i in row)
    return 1.0 - used / max(len(rows) * length, 1)
