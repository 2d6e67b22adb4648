"""Multi-head self-attention: softmax(QKᵀ/√d_k)·V with causal and segment masks.

Two interchangeable implementations of the core, chosen by ``impl``:

- ``'xla'``: the formula written out with einsums (readable; f32 softmax);
- ``'dot_product'`` / ``'cudnn'``: ``jax.nn.dot_product_attention`` (XLA, or the fused cuDNN
  kernel on NVIDIA GPUs).

Grouped-query attention (``num_kv_heads < num_heads``) shares each K/V head among a group of
query heads. Packed sequences pass ``segment_ids`` so no token attends across a document
boundary.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.models.layers import apply_rope, dense, einsum_f32

Impl = Literal["xla", "dot_product", "cudnn"]


def attention_mask(
    q_len: int,
    kv_len: int,
    causal: bool,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
) -> jax.Array | None:
    """Boolean mask (B or 1, 1, Lq, Lk): True where query i may attend to key j."""
    mask = None
    if causal:  # query i sits at absolute index i + (Lk - Lq) (a suffix of the keys)
        qi = jnp.arange(q_len)[:, None] + (kv_len - q_len)
        mask = (qi >= jnp.arange(kv_len)[None, :])[None, None]  # (1, 1, Lq, Lk)
    if q_segment_ids is not None:
        kv_seg = q_segment_ids if kv_segment_ids is None else kv_segment_ids
        same = (q_segment_ids[:, :, None] == kv_seg[:, None, :])[:, None]  # (B, 1, Lq, Lk)
        mask = same if mask is None else mask & same
    return mask


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, impl: Impl = "xla"
) -> jax.Array:
    """softmax(QKᵀ/√d_k)·V. q: (B, Lq, H, Dh); k, v: (B, Lk, Hkv, Dh) → (B, Lq, H, Dh)."""
    if impl != "xla":
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, implementation="cudnn" if impl == "cudnn" else "xla"
        ).astype(q.dtype)
    b, lq, h, dh = q.shape
    hkv = k.shape[2]
    q = q.reshape(b, lq, hkv, h // hkv, dh)  # (B, Lq, Hkv, G, Dh)
    scores = einsum_f32("bqhgd,bkhd->bhgqk", q, k) / jnp.sqrt(dh).astype(jnp.float32)
    if mask is not None:  # (B|1, 1, Lq, Lk) → broadcast over (Hkv, G)
        scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)  # (B, Hkv, G, Lq, Lk)
    out = einsum_f32("bhgqk,bkhd->bqhgd", probs, v)  # (B, Lq, Hkv, G, Dh)
    return out.reshape(b, lq, h, dh).astype(q.dtype)


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
    packed documents apart (0 marks padding).
    """

    num_heads: int
    num_kv_heads: int | None = None
    causal: bool = True
    impl: Impl = "xla"
    rope_theta: float | None = None
    use_bias: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(
        self,
        q_in: jax.Array,  # (B, Lq, D)
        k_in: jax.Array,  # (B, Lk, D)
        v_in: jax.Array,  # (B, Lk, D)
        positions: jax.Array | None = None,  # (B, Lq); also used for keys when Lk == Lq
        segment_ids: jax.Array | None = None,  # (B, Lq)
    ) -> jax.Array:  # (B, Lq, D)
        d_model = q_in.shape[-1]
        h, hkv = self.num_heads, self.num_kv_heads or self.num_heads
        dh = d_model // h
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype, "use_bias": self.use_bias}
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
        mask = attention_mask(q.shape[1], k.shape[1], self.causal, segment_ids)
        out = dot_product_attention(q, k, v, mask, self.impl)  # (B, Lq, H, Dh)
        return dense(d_model, ("heads", "head_dim", "embed"), in_axes=2, name="out", **kw)(
            out
        )  # (B, Lq, D)
