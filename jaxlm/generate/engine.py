"""The decoding engine: a fixed-size KV cache, a jitted prefill and a jitted decode loop.

Token ids in, token ids out; text, stop strings and printing are
:mod:`jaxlm.generate.generator`'s.

A batch of prompts of different lengths is *left*-padded to one length P, so every row's
last prompt token sits in the same cache slot and one decode step serves all rows. Padding
has segment id 0, which attention masks out, and each row's real tokens take positions
0, 1, ... from its first one, so a row computes exactly what it would alone::

    prefill  prompts (B, P) → cache slots [0, P) → logits of slot P-1 → token 0
    decode   token i-1 → cache slot P+i-1 → logits → token i,  i = 1 .. N-1

The decode loop is one ``lax.while_loop`` that stops early once every row has produced EOS;
:meth:`DecodeEngine.stream` runs the same jitted step from Python instead, one token at a
time, for printing as tokens come. Token i is always drawn with ``fold_in(key(seed), i)``,
so both paths draw the same tokens.

Everything runs on the mesh: rows are split over the data-parallel axes (the batch is
filled up to a multiple of them), parameters and the cache are sharded by their logical
axis names (the cache's K/V heads like the attention's, over ``tensor``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxlm.config import ModelConfig
from jaxlm.generate.sampling import Sampling, sample_logits
from jaxlm.models import DecoderLM
from jaxlm.sharding import Rules, activate, batch_sharding, logical_to_sharding, replicated

PAD_ID = 0  # token id under padding (masked out: any id would do)
LENGTH_MULTIPLE = 8  # prompts are padded to a multiple of this: fewer shapes to compile


@dataclasses.dataclass(frozen=True)
class PaddedBatch:
    """Prompts left-padded into arrays, on the host."""

    tokens: np.ndarray  # (B, P) int32, padding first
    positions: np.ndarray  # (B, P) int32, 0 at each row's first real token
    segment_ids: np.ndarray  # (B, P) int32: 1 = prompt, 0 = padding
    lengths: np.ndarray  # (B,) int32 prompt lengths; 0 for the rows that fill up the mesh
    n_prompts: int  # the first n_prompts rows are real


def left_pad(prompts: Sequence[Sequence[int]], row_multiple: int = 1,
             length_multiple: int = LENGTH_MULTIPLE) -> PaddedBatch:
    """Left-pad ``prompts`` (token ids, each non-empty) into a :class:`PaddedBatch` of
    ``ceil(n / row_multiple) * row_multiple`` rows."""
    rows = -(-len(prompts) // row_multiple) * row_multiple
    width = -(-max(len(p) for p in prompts) // length_multiple) * length_multiple
    tokens = np.full((rows, width), PAD_ID, np.int32)
    lengths = np.zeros(rows, np.int32)
    for r, p in enumerate(prompts):
        tokens[r, width - len(p):] = p
        lengths[r] = len(p)
    first = width - lengths[:, None]  # (B, 1) slot of each row's first real token
    slots = np.arange(width)[None]  # (1, P)
    return PaddedBatch(tokens, np.maximum(slots - first, 0).astype(np.int32),
                       (slots >= first).astype(np.int32), lengths, len(prompts))


def cut_at(tokens: Sequence[int], eos_id: int | None) -> tuple[list[int], bool]:
    """``tokens`` up to (not including) the first ``eos_id``, and whether it was there."""
    tokens = [int(t) for t in tokens]
    if eos_id is not None and eos_id in tokens:
        return tokens[:tokens.index(eos_id)], True
    return tokens, False


class DecodeEngine:
    """Prefill and decode for one model config on one mesh (see the module docstring).

    Built once and reused: its jitted functions compile once per shape (rows, padded prompt
    length, new tokens) and sampling setting, and take the parameters as an argument, so a
    training run can sample from its changing parameters without recompiling.
    """

    def __init__(self, cfg: ModelConfig, mesh: Mesh, rules: Rules) -> None:
        self.cfg, self.mesh, self.rules = cfg, mesh, rules
        self.model = DecoderLM(cfg)
        self.rows = batch_sharding(mesh, rules)  # (B, ...) arrays: rows over data-parallel
        self.replicated = replicated(mesh)
        axes = self.rows.spec[0] or ()
        self.row_multiple = math.prod(mesh.shape[a] for a in
                                      ((axes,) if isinstance(axes, str) else axes))
        self._cache_specs: dict[tuple[int, int], Any] = {}
        cache = self._cache_shardings()
        self._prefill = jax.jit(self._prefill_fn, donate_argnums=1,
                                out_shardings=(self.rows, cache))
        self._step = jax.jit(self._step_fn, donate_argnums=1, out_shardings=(self.rows, cache))
        self._zeros = jax.jit(self._zeros_fn, static_argnums=(0, 1), out_shardings=cache)
        self._sample = jax.jit(self._sample_fn, static_argnums=3,
                               out_shardings=self.replicated)
        self._decode = jax.jit(self._decode_fn, static_argnums=(6, 8),
                               out_shardings=(self.replicated, self.replicated))

    # ------------------------------------------------------------------------ the cache

    def _abstract_cache(self, rows: int, length: int) -> Any:
        """The boxed (logically named) cache of ``rows`` x ``length`` slots: shapes only."""
        key = (rows, length)
        if key not in self._cache_specs:
            init = functools.partial(self.model.init, decode=True)
            tokens = jax.ShapeDtypeStruct((rows, length), jnp.int32)
            self._cache_specs[key] = jax.eval_shape(init, jax.random.PRNGKey(0), tokens)["cache"]
        return self._cache_specs[key]

    def _cache_shardings(self) -> Any:
        """NamedShardings of the cache tree (the same for every size)."""
        specs = nn.get_partition_spec(self._abstract_cache(self.row_multiple, LENGTH_MULTIPLE))
        return logical_to_sharding(specs, self.mesh, self.rules)

    def _zeros_fn(self, rows: int, length: int) -> Any:
        abstract = nn.unbox(self._abstract_cache(rows, length))
        return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)

    def new_cache(self, rows: int, length: int) -> Any:
        """An empty cache of ``length`` slots per row, sharded on the mesh."""
        return self._zeros(rows, length)

    # -------------------------------------------------------------- jitted computations

    def _forward(self, params: Any, cache: Any, tokens: jax.Array, positions: jax.Array,
                 segment_ids: jax.Array) -> tuple[jax.Array, Any]:
        """Logits (B, L, V) of tokens (B, L) written into the cache at its index."""
        logits, out = self.model.apply({"params": params, "cache": cache}, tokens, positions,
                                       segment_ids, decode=True, mutable=["cache"])
        return logits, out["cache"]

    def _prefill_fn(self, params: Any, cache: Any, tokens: jax.Array, positions: jax.Array,
                    segment_ids: jax.Array) -> tuple[jax.Array, Any]:
        logits, cache = self._forward(params, cache, tokens, positions, segment_ids)
        return logits[:, -1], cache  # (B, V): the last slot is every row's last prompt token

    def _step_fn(self, params: Any, cache: Any, token: jax.Array,
                 position: jax.Array) -> tuple[jax.Array, Any]:
        logits, cache = self._forward(params, cache, token[:, None], position[:, None],
                                      jnp.ones_like(token)[:, None])
        return logits[:, 0], cache  # (B, V)

    @staticmethod
    def _sample_fn(logits: jax.Array, seed: jax.Array, i: jax.Array,
                   sampling: Sampling) -> jax.Array:
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        return sample_logits(logits, key, sampling)  # (B,)

    def _decode_fn(self, params: Any, cache: Any, first: jax.Array, lengths: jax.Array,
                   done: jax.Array, seed: jax.Array, sampling: Sampling, eos: jax.Array,
                   n_new: int) -> tuple[jax.Array, jax.Array]:
        """Tokens 1 .. n_new-1 after ``first`` (B,) under ``lax.while_loop``; returns all
        tokens (B, n_new) and how many were produced (the loop ends when every row is
        ``done``: it has produced ``eos`` or is not a prompt)."""
        out = jnp.zeros((first.shape[0], n_new), jnp.int32).at[:, 0].set(first)

        def unfinished(carry: tuple) -> jax.Array:
            i, _, _, done, _ = carry
            return (i < n_new) & ~jnp.all(done)

        def step(carry: tuple) -> tuple:
            i, token, cache, done, out = carry
            logits, cache = self._step_fn(params, cache, token, lengths + i - 1)
            token = self._sample_fn(logits, seed, i, sampling)
            out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
            return i + 1, token, cache, done | (token == eos), out

        carry = (jnp.int32(1), first, cache, done | (first == eos), out)
        n, _, _, _, out = jax.lax.while_loop(unfinished, step, carry)
        return out, n

    # ------------------------------------------------------------------------ host side

    def _put(self, x: np.ndarray) -> jax.Array:
        """A host array as a global array with rows split over the mesh (any process count:
        each process fills the shards its devices hold)."""
        return jax.make_array_from_callback(x.shape, self.rows, lambda idx: x[idx])

    def prefill(self, params: Any, batch: PaddedBatch, n_new: int) -> tuple[jax.Array, Any]:
        """Write the prompts into a new cache with room for ``n_new`` tokens; returns the
        logits (B, V) for the first new token and the cache."""
        rows, length = batch.tokens.shape
        cache = self.new_cache(rows, length + n_new)
        with activate(self.mesh, self.rules):
            return self._prefill(params, cache, self._put(batch.tokens),
                                 self._put(batch.positions), self._put(batch.segment_ids))

    def step(self, params: Any, cache: Any, token: np.ndarray | jax.Array,
             position: np.ndarray) -> tuple[jax.Array, Any]:
        """Feed one token per row (B,) at ``position`` (B,); returns the next logits (B, V)
        and the cache."""
        with activate(self.mesh, self.rules):
            return self._step(params, cache, self._put(np.asarray(token, np.int32)),
                              self._put(np.asarray(position, np.int32)))

    def sample(self, logits: jax.Array, seed: int, i: int, sampling: Sampling) -> np.ndarray:
        """Token i (B,) drawn from ``logits``, on the host."""
        with activate(self.mesh, self.rules):
            return np.asarray(self._sample(logits, np.int32(seed), np.int32(i), sampling))

    def decode(self, params: Any, cache: Any, first: np.ndarray, batch: PaddedBatch,
               n_new: int, sampling: Sampling, seed: int = 0,
               eos_id: int | None = None) -> np.ndarray:
        """Tokens 0 .. n_new-1 of every row (B, n) on the host, from token 0 (``first``,
        drawn from the prefill's logits) by the jitted while_loop; n < n_new when every
        prompt row produced ``eos_id`` early (the rows keep going after their own EOS)."""
        with activate(self.mesh, self.rules):
            out, n = self._decode(params, cache, self._put(first), self._put(batch.lengths),
                                  self._put(batch.lengths == 0), np.int32(seed), sampling,
                                  np.int32(-1 if eos_id is None else eos_id), n_new)
        return np.asarray(out)[:, :int(n)]

    def generate(self, params: Any, prompts: Sequence[Sequence[int]], n_new: int,
                 sampling: Sampling, seed: int = 0,
                 eos_id: int | None = None) -> list[tuple[list[int], bool]]:
        """Up to ``n_new`` tokens after each prompt, all rows at once: per prompt, the new
        tokens (EOS excluded) and whether EOS ended them. Every prompt plus ``n_new`` must
        fit in ``cfg.max_seq_len`` (the caller checks)."""
        batch = left_pad(prompts, self.row_multiple)
        logits, cache = self.prefill(params, batch, n_new)
        first = self.sample(logits, seed, 0, sampling)
        out = self.decode(params, cache, first, batch, n_new, sampling, seed, eos_id)
        return [cut_at(row, eos_id) for row in out[:batch.n_prompts]]

    def stream(self, params: Any, prompt: Sequence[int], n_new: int, sampling: Sampling,
               seed: int = 0, eos_id: int | None = None) -> Iterator[int]:
        """The new tokens of one prompt, yielded as each is computed (a Python loop over the
        jitted step); ends before EOS or after ``n_new`` tokens."""
        batch = left_pad([prompt], self.row_multiple)
        logits, cache = self.prefill(params, batch, n_new)
        for i in range(n_new):
            token = self.sample(logits, seed, i, sampling)  # (B,): row 0 is the prompt's
            if int(token[0]) == eos_id:
                return
            yield int(token[0])
            if i + 1 < n_new:
                logits, cache = self.step(params, cache, token, batch.lengths + i)
