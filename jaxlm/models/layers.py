"""Building blocks shared by the transformer: dense layers, norms, MLPs, positions.

Every parameter is created with logical axis names (``'embed'``, ``'mlp'``, ``'heads'``...) that
``jaxlm.sharding`` maps onto the mesh. Matmuls take inputs in the compute dtype (bf16 by
default) and accumulate in f32, forward and backward (``jaxlm.models.matmul``): on XLA:CPU
that is what reaches the AMX units (a plain bf16→bf16 dot runs as f32), and on accelerators
it is the usual mixed-precision recipe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import LoraConfig, ModelConfig
from jaxlm.models import lora as lora_lib
from jaxlm.models.matmul import contract


def einsum_f32(spec: str, *operands: jax.Array) -> jax.Array:
    """An einsum accumulating in f32 whatever the operand dtype."""
    return jnp.einsum(spec, *operands, preferred_element_type=jnp.float32)


def dtypes(cfg: ModelConfig) -> dict:
    """The compute and parameter dtypes of a model config, as ``dense`` keyword arguments."""
    return {"dtype": cfg.dtype, "param_dtype": cfg.param_dtype}


class Dense(nn.Module):
    """A linear map contracting the last ``n_in`` input axes into ``features`` output axes.

    The kernel has shape ``in_shape + features`` and the logical axis names ``axes`` (one per
    kernel dimension); the bias, if any, is named by the output axes. Inputs and kernel are
    cast to the compute dtype; accumulation is f32. With ``lora`` set and this layer among
    its targets, a low-rank adapter is added beside the kernel (:mod:`jaxlm.models.lora`).
    """

    features: tuple[int, ...]
    axes: tuple[str | None, ...]
    n_in: int = 1
    use_bias: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    init_std: float = 0.02
    lora: LoraConfig | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (..., *in) -> (..., *features)
        n_out = len(self.features)
        init = nn.with_logical_partitioning(nn.initializers.normal(self.init_std), self.axes)
        kernel = self.param(
            "kernel",
            init,
            x.shape[x.ndim - self.n_in :] + self.features,
            jnp.dtype(self.param_dtype),
        )
        y = contract(x, kernel, self.n_in, self.dtype)
        if lora_lib.targeted(self.path, self.lora):
            r, in_axes, out_axes = self.lora.rank, self.axes[: self.n_in], self.axes[self.n_in :]
            a = self.param("lora_a", nn.with_logical_partitioning(
                lora_lib.a_init(self.n_in), (*in_axes, None)), kernel.shape[: self.n_in] + (r,),
                jnp.dtype(self.param_dtype))  # (*in, r)
            b = self.param("lora_b", nn.with_logical_partitioning(
                nn.initializers.zeros, (None, *out_axes)), (r, *self.features),
                jnp.dtype(self.param_dtype))  # (r, *out)
            y = y + lora_lib.delta(x, a, b, self.n_in, self.lora, self.dtype, self)
        if self.use_bias:
            bias_init = nn.with_logical_partitioning(nn.initializers.zeros, self.axes[-n_out:])
            y = y + self.param("bias", bias_init, self.features, jnp.dtype(self.param_dtype))
        return y


def dense(
    features: int | Sequence[int],
    axes: tuple[str | None, ...],
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    in_axes: int = 1,
    use_bias: bool = False,
    init_std: float = 0.02,
    lora: LoraConfig | None = None,
    name: str | None = None,
) -> Dense:
    """Shorthand for :class:`Dense` with ``features`` an int or a tuple."""
    feats = (features,) if isinstance(features, int) else tuple(features)
    return Dense(feats, axes, in_axes, use_bias, dtype, param_dtype, init_std, lora, name=name)


def residual_std(cfg: ModelConfig) -> float:
    """Init std of the projections that write into the residual stream (attention out, MLP
    down): 0.02, or 0.02/sqrt(2 * n_layers) with ``model.residual_init=scaled`` (GPT-2's
    paper, nanoGPT) so the stream's variance does not grow with depth at init."""
    return 0.02 / math.sqrt(2 * cfg.n_layers) if cfg.residual_init == "scaled" else 0.02


def norm(cfg: ModelConfig, name: str) -> nn.Module:
    """``cfg.norm``: LayerNorm (GPT-2, BERT) or RMSNorm (Llama), computed in f32. Module
    names contain 'norm' so the optimizer's weight-decay mask can find them."""
    scale = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(
            epsilon=cfg.norm_eps,
            scale_init=scale,
            dtype=jnp.float32,
            param_dtype=cfg.param_dtype,
            name=name,
        )
    bias = nn.with_logical_partitioning(nn.initializers.zeros, ("embed",))
    return nn.LayerNorm(
        epsilon=cfg.norm_eps,
        scale_init=scale,
        bias_init=bias,
        dtype=jnp.float32,
        param_dtype=cfg.param_dtype,
        name=name,
    )


class Mlp(nn.Module):
    """``cfg.mlp``: Dense → GELU → Dense (``gelu_tanh``: GPT-2; ``gelu``, exact erf: BERT), or
    SwiGLU, down(silu(gate) * up) (Llama). Biases where ``cfg.bias``."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # x: (B, L, D)
        cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
        kw = {**dtypes(cfg), "use_bias": cfg.bias, "lora": cfg.lora}
        if cfg.mlp == "swiglu":
            gate = dense(cfg.d_ff, ("embed", "mlp"), name="gate", **kw)(x)  # (B, L, F)
            up = dense(cfg.d_ff, ("embed", "mlp"), name="up", **kw)(x)  # (B, L, F)
            h = (nn.silu(gate) * up).astype(dt)
        else:
            h = dense(cfg.d_ff, ("embed", "mlp"), name="fc", **kw)(x)  # (B, L, F)
            h = nn.gelu(h, approximate=cfg.mlp == "gelu_tanh").astype(dt)
        return dense(cfg.d_model, ("mlp", "embed"), name="proj", init_std=residual_std(cfg),
                     **kw)(h)  # (B, L, D)


def sinusoidal(positions: jax.Array, dim: int, max_timescale: float = 10000.0) -> jax.Array:
    """Fixed sin/cos position encodings (Vaswani et al.): (B, L) → (B, L, dim)."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_timescale) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None].astype(jnp.float32) * freqs  # (B, L, dim/2)
    enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return jnp.pad(enc, [(0, 0)] * (enc.ndim - 1) + [(0, dim - 2 * half)])


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding on x: (B, L, H, Dh) with positions (B, L); rotate-half form."""
    half = x.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # (Dh/2,)
    angles = positions[..., None].astype(jnp.float32) * freqs  # (B, L, Dh/2)
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]  # (B, L, 1, Dh/2)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
