"""The decoder-only transformer language model (GPT-2 and Llama families).

Read top to bottom: token embedding (+ positions) → N blocks of
``x + attn(norm(x))``, ``x + mlp(norm(x))`` → final norm → logits over the vocabulary.

- GPT-2: learned positions, LayerNorm, GELU MLP, biases, tied input/output embeddings.
- Llama: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, untied output head.
- ``positions: sinusoidal`` swaps in fixed sin/cos encodings for either family.

Shapes: B batch, L sequence, D d_model, V vocab.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ModelConfig
from jaxlm.models.attention import MultiHeadAttention
from jaxlm.models.layers import Mlp, dot_f32, norm, resolve_dtype, sinusoidal

REMAT_POLICIES = {
    "full": None,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nn.Module):
    """One pre-norm transformer block. Returns ``(x, None)`` so it can be scanned."""

    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None):
        cfg = self.cfg
        x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))  # (B, L, D)
        h = norm(cfg, "attn_norm")(x)
        h = MultiHeadAttention(
            num_heads=cfg.n_heads,
            num_kv_heads=cfg.n_kv_heads,
            impl=cfg.attention,
            rope_theta=cfg.rope_theta if cfg.positions == "rope" else None,
            use_bias=cfg.family == "gpt2",
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name="attn",
        )(h, h, h, positions=positions, segment_ids=segment_ids)
        x = x + nn.Dropout(cfg.dropout)(h, deterministic=self.deterministic)
        h = Mlp(cfg, name="mlp")(norm(cfg, "mlp_norm")(x))
        x = x + nn.Dropout(cfg.dropout)(h, deterministic=self.deterministic)
        return x, None


class DecoderLM(nn.Module):
    """Causal language model: tokens (B, L) → logits (B, L, V) in f32."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,  # (B, L) int
        positions: jax.Array | None = None,  # (B, L) position within each document
        segment_ids: jax.Array | None = None,  # (B, L) packed-document ids, 0 = padding
        train: bool = False,
    ) -> jax.Array:
        cfg = resolve_dtype(self.cfg)  # dtype: auto → bf16 or f32 for this hardware
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("vocab", "embed")
            ),
            param_dtype=cfg.param_dtype,
            name="wte",
        )
        x = embed(tokens).astype(jnp.float32)  # (B, L, D)
        if cfg.positions == "learned":
            x = x + nn.Embed(
                cfg.max_seq_len,
                cfg.d_model,
                embedding_init=nn.with_logical_partitioning(
                    nn.initializers.normal(0.01), (None, "embed")
                ),
                param_dtype=cfg.param_dtype,
                name="wpe",
            )(positions)
        elif cfg.positions == "sinusoidal":
            x = x + sinusoidal(positions, cfg.d_model)
        x = nn.Dropout(cfg.dropout)(x, deterministic=not train)

        block = Block
        if cfg.remat != "none":
            block = nn.remat(
                Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers
            )
        if cfg.scan_layers:  # one compiled block, parameters stacked on a leading 'layers' axis
            x, _ = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, deterministic=not train, name="blocks")(x, positions, segment_ids)
        else:
            for i in range(cfg.n_layers):
                x, _ = block(cfg, deterministic=not train, name=f"block_{i}")(
                    x, positions, segment_ids
                )

        x = norm(cfg, "final_norm")(x).astype(cfg.dtype)  # (B, L, D)
        if cfg.tie_embeddings:
            w = embed.embedding.astype(cfg.dtype)  # (V, D)
            logits = dot_f32(x, w, (((2,), (1,)), ((), ())))
        else:
            logits = nn.DenseGeneral(
                cfg.vocab_size,
                use_bias=False,
                dot_general=dot_f32,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.normal(0.02), ("embed", "vocab")
                ),
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                name="lm_head",
            )(x)
        return logits.astype(jnp.float32)  # (B, L, V)
