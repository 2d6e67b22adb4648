"""Text generation: prompts in, completions out, with stop strings and streaming.

:class:`Generator` holds a decoder LM's parameters on a mesh, its tokenizer and a
:class:`~jaxlm.generate.engine.DecodeEngine`. Prompts are encoded as in training (the
end-of-text token first, as every training document starts with it); completions end at
EOS, at a stop string (found in the decoded text, and not included) or after
``max_new_tokens`` tokens, and never run past the model's context (``max_seq_len``).

    >>> gen = Generator.load("runs/tiny")                                # doctest: +SKIP
    >>> gen.generate(["ROMEO:", "JULIET:"], max_new_tokens=32)           # doctest: +SKIP
    >>> for piece in gen.stream("ROMEO:", sampling=Sampling(0.8, top_p=0.95)):
    ...     print(piece, end="", flush=True)                             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from jax.sharding import Mesh

from jaxlm.config import MeshConfig, ModelConfig
from jaxlm.generate.engine import DecodeEngine
from jaxlm.generate.sampling import DEFAULT, GenerationError, Sampling
from jaxlm.generate.source import check_can_generate, load_source
from jaxlm.sharding import Rules

FinishReason = Literal["eos", "stop", "length"]
# Told (max_new_tokens asked for, tokens it was capped to, longest prompt in tokens) when the
# model's context leaves less room than asked for.
OnCapped = Callable[[int, int, int], None]
CONTEXT_TOKENS = 4  # prompt tokens decoded with the completion, so its first space survives


@dataclasses.dataclass(frozen=True)
class Completion:
    """What was generated after one prompt."""

    prompt: str
    text: str  # the new text, without the stop string or EOS
    token_ids: list[int]  # the new tokens (up to the one that completed a stop string)
    finish_reason: FinishReason  # eos, stop (string), or length (max_new_tokens / context)


class TextStream:
    """New token ids → new text, as they come.

    Holds back what may still change: a trailing incomplete UTF-8 character (decoded as
    U+FFFD) and a tail that could be the start of a stop string. Stops at the first stop
    string. The batch path feeds finished rows through this too, so both cut alike.
    """

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: Sequence[str]) -> None:
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.context = prompt_ids[-CONTEXT_TOKENS:]
        self.prefix = tokenizer.decode(self.context)
        self.ids: list[int] = []
        self.text, self.emitted, self.stopped = "", 0, False

    def _decode(self) -> str:
        full = self.tokenizer.decode(self.context + self.ids)
        if full.startswith(self.prefix):
            return full[len(self.prefix):]
        return self.tokenizer.decode(self.ids)

    def add(self, token: int) -> str:
        """Take one new token; return the text that is now certain."""
        self.ids.append(token)
        text = self._decode()
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = text[:min(hits)], True
            return self.flush()
        self.text = text
        hold = max([k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])],
                   default=0)
        safe = len(text) - hold
        while safe > self.emitted and text[safe - 1] == "\ufffd":
            safe -= 1
        piece, self.emitted = text[self.emitted:safe], max(self.emitted, safe)
        return piece

    def flush(self) -> str:
        """The text held back, at the end."""
        piece, self.emitted = self.text[self.emitted:], len(self.text)
        return piece


class Generator:
    """A decoder LM ready to generate (see the module docstring).

    ``params`` must be placed on ``mesh`` (e.g. by :func:`~jaxlm.generate.load_source`, or a
    training run's state); it may be replaced later by arrays of the same shapes and
    shardings (the training loop points it at its current parameters) without recompiling.
    """

    def __init__(self, cfg: ModelConfig, params: Any, tokenizer: Any, mesh: Mesh, rules: Rules,
                 bos_id: int | None = None, eos_id: int | None = None) -> None:
        check_can_generate(cfg)
        self.cfg, self.params, self.tokenizer = cfg, params, tokenizer
        self.bos_id, self.eos_id = bos_id, eos_id
        self.engine = DecodeEngine(cfg, mesh, rules)

    @classmethod
    def load(cls, source: str | Path, mesh: MeshConfig | None = None,
             step: int | None = None, dtype: str | None = None) -> Generator:
        """From a run directory (its latest checkpoint, or ``step``), a checkpoint step
        directory or an export (see :func:`~jaxlm.generate.load_source`), on the local
        devices; ``dtype`` (auto, float32, bfloat16) replaces the saved compute dtype."""
        m = load_source(source, mesh, step, dtype)
        return cls(m.cfg, m.params, m.tokenizer, m.mesh, m.rules, m.bos_id, m.eos_id)

    def encode(self, prompt: str, name: str = "the prompt") -> list[int]:
        """Token ids of ``prompt`` (BOS first), checked to leave room for one new token."""
        ids = self.tokenizer.encode(prompt).ids if prompt else []
        if not ids:
            raise GenerationError(f"{name} is empty: give some text to continue")
        ids = ([self.bos_id] if self.bos_id is not None else []) + ids
        limit = self.cfg.max_seq_len
        if len(ids) >= limit:
            raise GenerationError(
                f"{name} is {len(ids)} tokens but the model's context (model.max_seq_len) is "
                f"{limit}: shorten it to at most {limit - 1} tokens, BOS included")
        return ids

    def _encode_all(self, prompts: Sequence[str]) -> list[list[int]]:
        if not prompts:
            raise GenerationError("no prompts given")
        many = len(prompts) > 1
        return [self.encode(p, f"prompt {i + 1}" if many else "the prompt")
                for i, p in enumerate(prompts)]

    def _budget(self, prompts: list[list[int]], max_new_tokens: int) -> int:
        """New tokens to make room for: ``max_new_tokens``, cut to the context left."""
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens {max_new_tokens} must be >= 1")
        return min(max_new_tokens, self.cfg.max_seq_len - max(len(p) for p in prompts))

    def _tell_cap(self, prompts: list[list[int]], max_new_tokens: int,
                  on_capped: OnCapped | None) -> None:
        """Call ``on_capped`` once, before decoding, if the longest prompt leaves less of the
        context than ``max_new_tokens`` (the batches of shorter prompts may get more)."""
        longest = max(len(p) for p in prompts)
        cap = self._budget(prompts, max_new_tokens)
        if on_capped is not None and cap < max_new_tokens:
            on_capped(max_new_tokens, cap, longest)

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64,
                 sampling: Sampling = DEFAULT, seed: int = 0, stop: Sequence[str] = (),
                 batch_size: int = 32, on_capped: OnCapped | None = None) -> list[Completion]:
        """One :class:`Completion` per prompt; ``batch_size`` prompts decode at once.
        ``on_capped`` is told once when the context cuts ``max_new_tokens`` (each batch
        decodes as many as its longest prompt leaves room for)."""
        if batch_size < 1:
            raise GenerationError(f"batch_size {batch_size} must be >= 1")
        ids = self._encode_all(prompts)
        self._tell_cap(ids, max_new_tokens, on_capped)
        out: list[Completion] = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            n_new = self._budget(chunk, max_new_tokens)
            rows = self.engine.generate(self.params, chunk, n_new, sampling, seed, self.eos_id)
            for prompt, prompt_ids, (new, eos) in zip(prompts[start:start + batch_size], chunk,
                                                      rows, strict=True):
                out.append(self._finish(prompt, prompt_ids, new, eos, stop))
        return out

    def _finish(self, prompt: str, prompt_ids: list[int], new: list[int], eos: bool,
                stop: Sequence[str]) -> Completion:
        text = TextStream(self.tokenizer, prompt_ids, stop)
        for token in new:
            text.add(token)
            if text.stopped:
                break
        reason: FinishReason = "stop" if text.stopped else "eos" if eos else "length"
        return Completion(prompt, text.text, text.ids, reason)

    def stream(self, prompt: str, max_new_tokens: int = 64, sampling: Sampling = DEFAULT,
               seed: int = 0, stop: Sequence[str] = (),
               on_capped: OnCapped | None = None) -> Iterator[str]:
        """The completion of one prompt, piece by piece as tokens are computed. Its pieces
        join to the ``text`` :meth:`generate` gives for the same prompt, settings and seed.
        The prompt is checked now, before the first piece is asked for (and ``on_capped``
        told, as by :meth:`generate`)."""
        ids = self._encode_all([prompt])[0]
        self._tell_cap([ids], max_new_tokens, on_capped)
        n_new = self._budget([ids], max_new_tokens)
        tokens = self.engine.stream(self.params, ids, n_new, sampling, seed, self.eos_id)
        return self._pieces(TextStream(self.tokenizer, ids, stop), tokens)

    @staticmethod
    def _pieces(text: TextStream, tokens: Iterator[int]) -> Iterator[str]:
        for token in tokens:
            piece = text.add(token)
            if piece:
                yield piece
            if text.stopped:
                return
        piece = text.flush()
        if piece:
            yield piece
