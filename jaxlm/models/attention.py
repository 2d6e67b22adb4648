"""Multi-head self-attention: softmax(QKᵀ/√d_k)·V with causal and segment masks.

Two interchangeable implementations of the core, chosen by ``impl``:

- ``'xla'``: the formula written out with einsums (readable; f32 softmax), with its own
  backward so every matmul both ways runs in the compute dtype, and causal query blocks
  that skip fully masked keys; the default on CPUs;
- ``'dot_product'`` / ``'cudnn'``: ``jax.nn.dot_product_attention`` (XLA, or the fused cuDNN
  kernel on NVIDIA GPUs).

Grouped-query attention (``num_kv_heads < num_heads``) shares each K/V head among a group of
query heads. Packed sequences pass ``segment_ids`` so no token attends across a document
boundary.

Decode mode (``decode=True``, for generation) keeps a fixed-size KV cache in the Linen
``cache`` collection: each call writes its keys and values at the cache index and attends
over every slot written so far. Its length is that of the input the model was initialised
with in decode mode; training never creates it.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import LoraConfig
from jaxlm.models.layers import apply_rope, dense, einsum_f32

Impl = Literal["xla", "dot_product", "cudnn"]
CACHE_AXES = ("act_batch", "act_len", "kv_heads", "head_dim")  # logical axes of cached K/V


def attention_mask(
    q_len: int,
    kv_len: int,
    causal: bool,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    q_start: jax.Array | int | None = None,
) -> jax.Array | None:
    """Boolean mask (B or 1, 1, Lq, Lk): True where query i may attend to key j.

    ``q_start``: the key index of the first query; by default the queries are the last Lq
    keys (``Lk - Lq``), a KV cache passes its write index.
    """
    mask = None
    if causal:  # query i sits at key index q_start + i
        qi = jnp.arange(q_len)[:, None] + (kv_len - q_len if q_start is None else q_start)
        mask = (qi >= jnp.arange(kv_len)[None, :])[None, None]  # (1, 1, Lq, Lk)
    if q_segment_ids is not None:
        kv_seg = q_segment_ids if kv_segment_ids is None else kv_segment_ids
        same = (q_segment_ids[:, :, None] == kv_seg[:, None, :])[:, None]  # (B, 1, Lq, Lk)
        mask = same if mask is None else mask & same
    return mask


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, impl: Impl = "xla",
    causal: bool = False,
) -> jax.Array:
    """softmax(QKᵀ/√d_k)·V. q: (B, Lq, H, Dh); k, v: (B, Lk, Hkv, Dh) → (B, Lq, H, Dh).

    ``causal`` (self-attention over the whole sequence, Lq = Lk): the written-out core skips
    the key blocks every query of a block is masked from — up to 4 query blocks of at least
    128, so it computes 62.5-75% of the scores instead of all. Measured on a 2-core CPU:
    +4% / +10% step rate at sequence 256 (issue / small config), +33% at 1024.
    """
    if impl != "xla":
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, implementation="cudnn" if impl == "cudnn" else "xla"
        ).astype(q.dtype)
    b, lq, h, dh = q.shape
    hkv = k.shape[2]
    q = q.reshape(b, lq, hkv, h // hkv, dh)  # (B, Lq, Hkv, G, Dh)
    if mask is None:
        mask = jnp.ones((1, 1, lq, k.shape[1]), bool)
    nb = min(4, lq // 128)
    if not causal or lq != k.shape[1] or nb < 2 or lq % nb:
        return _attend(q, k, v, mask).reshape(b, lq, h, dh)
    c = lq // nb
    outs = [_attend(q[:, i * c:(i + 1) * c], k[:, :(i + 1) * c], v[:, :(i + 1) * c],
                    mask[:, :, i * c:(i + 1) * c, :(i + 1) * c]) for i in range(nb)]
    return jnp.concatenate(outs, axis=1).reshape(b, lq, h, dh)


def _probs(q: jax.Array, k: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(QKᵀ/√d_k) (B, Hkv, G, Lq, Lk) in f32, from q (B, Lq, Hkv, G, Dh)."""
    scores = einsum_f32("bqhgd,bkhd->bhgqk", q, k) / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
    # mask (B|1, 1, Lq, Lk) → broadcast over (Hkv, G)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


@jax.custom_vjp
def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """The written-out formula. Every matmul, forward and backward, takes operands in the
    compute dtype and accumulates in f32 (JAX's own backward would run in f32)."""
    return _attend_fwd(q, k, v, mask)[0]


def _attend_fwd(q, k, v, mask):
    probs = _probs(q, k, mask).astype(v.dtype)  # (B, Hkv, G, Lq, Lk)
    out = einsum_f32("bhgqk,bkhd->bqhgd", probs, v).astype(q.dtype)  # (B, Lq, Hkv, G, Dh)
    return out, (q, k, v, probs, out)


def _attend_bwd(res, d_out):  # d_out: (B, Lq, Hkv, G, Dh)
    q, k, v, probs, out = res
    dt, scale = q.dtype, 1 / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
    d_out = d_out.astype(dt)
    dv = einsum_f32("bhgqk,bqhgd->bkhd", probs, d_out)  # (B, Lk, Hkv, Dh)
    dp = einsum_f32("bqhgd,bkhd->bhgqk", d_out, v)  # (B, Hkv, G, Lq, Lk)
    # softmax backward: dS = P ⊙ (dP − rowsum(dP ⊙ P)), and rowsum(dP ⊙ P) = rowsum(dO ⊙ O)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1)  # (B, Lq, Hkv, G)
    delta = jnp.moveaxis(delta, 1, -1)  # (B, Hkv, G, Lq)
    ds = (probs.astype(jnp.float32) * (dp - delta[..., None]) * scale).astype(dt)
    dq = einsum_f32("bhgqk,bkhd->bqhgd", ds, k)  # (B, Lq, Hkv, G, Dh)
    dk = einsum_f32("bhgqk,bqhgd->bkhd", ds, q)  # (B, Lk, Hkv, Dh)
    return dq.astype(dt), dk.astype(k.dtype), dv.astype(v.dtype), None


_attend.defvjp(_attend_fwd, _attend_bwd)


class MultiHeadAttention(nn.Module):
    """Multi-head attention over (batch, seq, d_model) query / key / value inputs.

    Usable on its own:

    >>> import jax, jax.numpy as jnp
    >>> attn = MultiHeadAttention(num_heads=4)           # causal self-attention, d_model 64
    >>> x = jnp.ones((2, 16, 64))                       # (batch, seq, d_model)
    >>> params = attn.init(jax.random.key(0), x, x, x)
    >>> attn.apply(params, x, x, x).shape
    (2, 16, 64)

    ``positions`` (B, L) feed RoPE when ``rope_theta`` is set; ``segment_ids`` (B, L) keep
    packed documents apart (0 marks padding). ``decode=True`` reads and extends the KV cache
    (self-attention only; see the module docstring).
    """

    num_heads: int
    num_kv_heads: int | None = None
    causal: bool = True
    impl: Impl = "xla"
    rope_theta: float | None = None
    use_bias: bool = False
    out_init_std: float = 0.02  # the output projection's (it writes into the residual stream)
    dtype: str = "float32"
    param_dtype: str = "float32"
    lora: LoraConfig | None = None  # adapters on the projections it targets (models/lora.py)

    @nn.compact
    def __call__(
        self,
        q_in: jax.Array,  # (B, Lq, D)
        k_in: jax.Array,  # (B, Lk, D)
        v_in: jax.Array,  # (B, Lk, D)
        positions: jax.Array | None = None,  # (B, Lq); also used for keys when Lk == Lq
        segment_ids: jax.Array | None = None,  # (B, Lq)
        decode: bool = False,
    ) -> jax.Array:  # (B, Lq, D)
        d_model = q_in.shape[-1]
        h, hkv = self.num_heads, self.num_kv_heads or self.num_heads
        dh = d_model // h
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype, "use_bias": self.use_bias,
              "lora": self.lora}
        dt = jnp.dtype(self.dtype)
        q = dense((h, dh), ("embed", "heads", "head_dim"), name="query", **kw)(q_in).astype(
            dt
        )  # (B, Lq, H, Dh)
        k = dense((hkv, dh), ("embed", "kv_heads", "head_dim"), name="key", **kw)(k_in).astype(
            dt
        )  # (B, Lk, Hkv, Dh)
        v = dense((hkv, dh), ("embed", "kv_heads", "head_dim"), name="value", **kw)(v_in).astype(
            dt
        )  # (B, Lk, Hkv, Dh)
        if self.rope_theta is not None:
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(q_in.shape[1]), q_in.shape[:2])
            q = apply_rope(q, positions, self.rope_theta)
            k = apply_rope(k, positions, self.rope_theta)
        if decode:  # attend over the cache: every slot written so far, this call's included
            if segment_ids is None:
                segment_ids = jnp.ones(q.shape[:2], jnp.int32)
            k, v, kv_segment_ids, q_start = self._extend_cache(k, v, segment_ids)
            mask = attention_mask(q.shape[1], k.shape[1], self.causal, segment_ids,
                                  kv_segment_ids, q_start)
        else:
            mask = attention_mask(q.shape[1], k.shape[1], self.causal, segment_ids)
        out = dot_product_attention(q, k, v, mask, self.impl,
                                    causal=self.causal and not decode)  # (B, Lq, H, Dh)
        return dense(d_model, ("heads", "head_dim", "embed"), in_axes=2, name="out",
                     init_std=self.out_init_std, **kw)(out)  # (B, Lq, D)

    def _extend_cache(
        self, k: jax.Array, v: jax.Array, segment_ids: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | int]:
        """Write this call's keys and values (B, Lq, Hkv, Dh) at the cache index; return the
        whole cache (B, T, Hkv, Dh) x2, the segment ids of its slots (B, T) (0: padding, or
        not written yet) and the slot of the first query.

        Keys are cached after RoPE, so each keeps the position it was given. The first call
        (``init``) only creates the cache, T long, and attends over its own input.
        """
        initialised = self.has_variable("cache", "cached_key")
        zeros = lambda axes: nn.with_logical_partitioning(jnp.zeros, axes)  # noqa: E731
        key = self.variable("cache", "cached_key", zeros(CACHE_AXES), k.shape, k.dtype)
        value = self.variable("cache", "cached_value", zeros(CACHE_AXES), v.shape, v.dtype)
        segments = self.variable("cache", "cached_segment_ids", zeros(CACHE_AXES[:2]),
                                 segment_ids.shape, jnp.int32)
        index = self.variable("cache", "cache_index", jnp.zeros, (), jnp.int32)
        if not initialised:
            return k, v, segment_ids, 0
        i = index.value
        key.value = jax.lax.dynamic_update_slice(key.value, k, (0, i, 0, 0))
        value.value = jax.lax.dynamic_update_slice(value.value, v, (0, i, 0, 0))
        segments.value = jax.lax.dynamic_update_slice(
            segments.value, segment_ids.astype(jnp.int32), (0, i))
        index.value = i + k.shape[1]
        return key.value, value.value, segments.value, i
