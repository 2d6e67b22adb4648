"""Sampling from a trained decoder LM (temperature + top-k).

This first version recomputes the forward pass over a fixed-size buffer for every new token
(one compiled shape, no KV cache): simple and fast enough for the short samples printed at
the end of pretraining.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_COMPILED: dict[tuple, Any] = {}  # (model id, temperature, top_k) -> jitted next-token fn


def _next_token_fn(model: nn.Module, temperature: float, top_k: int | None) -> Any:
    """The jitted next-token function, built once per model so repeated samples don't
    recompile (each eval prints one)."""
    key = (id(model), temperature, top_k)
    if key not in _COMPILED:

        @jax.jit
        def next_token(params: Any, buf: jax.Array, idx: jax.Array, rng: jax.Array) -> jax.Array:
            logits = model.apply({"params": params}, buf)[0, idx - 1]  # (V,) at the last slot
            logits = logits / max(temperature, 1e-6)
            if top_k is not None:
                kth = jax.lax.top_k(logits, top_k)[0][-1]
                logits = jnp.where(logits < kth, -jnp.inf, logits)
            return jax.random.categorical(rng, logits)

        _COMPILED[key] = (model, next_token)  # keep the model alive so its id stays unique
    return _COMPILED[key][1]


def sample(
    model: nn.Module,
    params: Any,
    prompt: list[int],
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 0.8,
    top_k: int | None = 40,
    eos_id: int | None = None,
) -> list[int]:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens; returns only the new tokens."""
    length = model.cfg.max_seq_len
    prompt = prompt[-max(1, length - max_new_tokens) :]
    max_new_tokens = min(max_new_tokens, length - len(prompt))
    buf = np.zeros((1, length), np.int32)  # (1, L)
    buf[0, : len(prompt)] = prompt

    next_token = _next_token_fn(model, temperature, top_k)
    rng, out = jax.random.PRNGKey(seed), []
    buf_dev = jnp.asarray(buf)
    for i in range(len(prompt), len(prompt) + max_new_tokens):
        rng, key = jax.random.split(rng)
        tok = int(next_token(params, buf_dev, jnp.int32(i), key))
        if eos_id is not None and tok == eos_id:
            break
        out.append(tok)
        buf_dev = buf_dev.at[0, i].set(tok)
    return out
