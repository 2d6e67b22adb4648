"""Next-token cross-entropy fused with the LM head, over sequence chunks.

The plain path writes the f32 (B, L, V) logits, reads them for the log-normaliser, keeps
them for the backward, reads them again there and writes their (B, L, V) gradient: for a
vocabulary of 8192-50k that is the largest tensor of the step, several times over. Here
each chunk of ``c`` positions (B, c, V) is projected, reduced and differentiated while it is
hot in cache, and only the sums and the gradients of the hidden states (B, L, D) and of the
head weight leave it. The gradients are computed in the forward pass (the loss is linear in
its cotangent), so nothing is recomputed and the logits are never stored.

The sums are :func:`token_sums`' (which the unfused path uses too); only the first output
(the objective) is differentiable, the sums are metrics.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlm.models.matmul import contract, dot_f32

# logits per chunk and device: 16 MiB of f32 on CPUs, where the chunk should stay in cache
# (measured on a 2-core CPU, B=16, V=8192: chunks of 16-64 positions all ran the head + loss
# ~1.4x faster than the unfused path); 256 MiB on accelerators, where chunking only bounds
# memory and fewer, larger matmuls are faster (not measured here: no accelerator).
CPU_CHUNK_ELEMENTS, ACCELERATOR_CHUNK_ELEMENTS = 1 << 22, 1 << 26


def chunk_length(batch: int, length: int, vocab: int, elements: int | None = None) -> int:
    """Positions per chunk: as many as keep a (batch, c, vocab) chunk (batch: the global
    one, spread over all devices) within ``elements`` logits per device; at least 1, at most
    ``length``."""
    if elements is None:
        cpu = jax.default_backend() == "cpu"
        per_device = CPU_CHUNK_ELEMENTS if cpu else ACCELERATOR_CHUNK_ELEMENTS
        elements = per_device * jax.device_count()
    return max(1, min(length, elements // (batch * vocab)))


def _chunks(x: jax.Array, c: int) -> jax.Array:
    """(B, L, ...) → (ceil(L / c), B, c, ...), the scan axis first; the last chunk is padded
    with zeros (weight 0: no loss, no gradient)."""
    b, length = x.shape[:2]
    n = -(-length // c)
    x = jnp.pad(x, [(0, 0), (0, n * c - length)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(b, n, c, *x.shape[2:]), 1, 0)


def _unchunk(x: jax.Array, length: int) -> jax.Array:
    """(n, B, c, ...) → (B, length, ...), the padding dropped."""
    n, b, c = x.shape[:3]
    return jnp.moveaxis(x, 0, 1).reshape(b, n * c, *x.shape[3:])[:, :length]


def token_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The log-normaliser (..., L) of logits (..., L, V) f32 and the weighted sums of the
    token loss: NLL, weight, log²Z (z-loss) and correct predictions. (The target is
    predicted when its logit is the largest: one max over V, which XLA shares with
    logsumexp's, instead of a separate argmax pass.)"""
    logz = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return logz, {"nll": jnp.sum((logz - target_logit) * weights), "weight": jnp.sum(weights),
                  "z": jnp.sum(jnp.square(logz) * weights),
                  "correct": jnp.sum((target_logit >= jnp.max(logits, -1)) * weights)}


def _add(a: dict, b: dict) -> dict:
    return jax.tree.map(jnp.add, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def lm_head_cross_entropy(h: jax.Array, w: jax.Array, targets: jax.Array, weights: jax.Array,
                          z_loss: float, dtype: str, k_last: bool, chunk: int
                          ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(objective, sums) of hidden states h (B, L, D) through the head weight ``w`` ((D, V),
    or the tied (V, D) table with ``k_last``) against ``targets`` (B, L) with ``weights``
    (B, L), ``chunk`` positions at a time."""
    def body(total, xs):
        hc, tc, wc = xs
        logits = contract(hc, w, 1, dtype, k_last)  # (B, c, V)
        return _add(total, token_sums(logits, tc, wc)[1]), None

    total, _ = jax.lax.scan(body, _zero_sums(), _scanned(h, targets, weights, chunk))
    return _objective(total, z_loss), total


def _scanned(h, targets, weights, chunk):
    """The scan's inputs: hidden states, targets and weights, chunk by chunk."""
    return tuple(_chunks(x, chunk) for x in (h, targets, weights))


def _objective(total: dict[str, jax.Array], z_loss: float) -> jax.Array:
    return total["nll"] + z_loss * total["z"]


def _zero_sums() -> dict[str, jax.Array]:
    return {k: jnp.zeros((), jnp.float32) for k in ("nll", "weight", "z", "correct")}


def _fwd(h, w, targets, weights, z_loss, dtype, k_last, chunk):
    dt = jnp.dtype(dtype)
    w_c = w.astype(dt)  # (V, D) tied or (D, V), cast once

    def body(carry, xs):
        total, dw_dv = carry
        hc, tc, wc = xs  # (B, c, D), (B, c), (B, c)
        logits = contract(hc, w_c, 1, dtype, k_last)  # (B, c, V) f32
        logz, sums = token_sums(logits, tc, wc)
        # d objective / d logits = weight · (softmax · (1 + 2 z_loss log Z) − onehot(target))
        probs = jnp.exp(logits - logz[..., None])
        onehot = jax.nn.one_hot(tc, logits.shape[-1], dtype=jnp.float32)
        d_logits = (wc[..., None] * (probs * (1 + 2 * z_loss * logz)[..., None] - onehot)
                    ).astype(dt)
        dh = dot_f32(d_logits, w_c, (2,), (0,) if k_last else (1,))  # (B, c, D)
        # the weight's gradient as (D, V) whatever w's layout: the small hidden chunk is the
        # operand that gets transposed, not the (B, c, V) one; one transpose after the loop
        dw_dv = dw_dv + dot_f32(hc.astype(dt), d_logits, (0, 1), (0, 1))  # (D, V)
        return (_add(total, sums), dw_dv), dh

    init = (_zero_sums(), jnp.zeros(w.shape[::-1] if k_last else w.shape, jnp.float32))
    (total, dw_dv), dh = jax.lax.scan(body, init, _scanned(h, targets, weights, chunk))
    out = (_objective(total, z_loss), total)
    # the barrier keeps XLA from folding this transpose into the loop's dot when the loop
    # has one chunk: a bf16 dot in that transposed form has no XLA:CPU kernel (it fails with
    # "Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32")
    dw = (jax.lax.optimization_barrier(dw_dv).T if k_last else dw_dv).astype(w.dtype)
    return out, (_unchunk(dh, h.shape[1]).astype(h.dtype), dw)


def _bwd(z_loss, dtype, k_last, chunk, res, g):
    dh, dw = res
    g_obj = g[0]  # the sums are metrics: their cotangents are ignored
    return (g_obj * dh).astype(dh.dtype), (g_obj * dw).astype(dw.dtype), None, None


lm_head_cross_entropy.defvjp(_fwd, _bwd)
