"""The transformer backbone: tokens → hidden states, shared by every model and head.

Read top to bottom: token embedding (+ positions, + token types) [→ embedding norm] → N
blocks → [final norm] → hidden states (B, L, D). What the blocks are is decided by the
config's feature flags (resolved once from ``model.family``), never by the family name:

- GPT-2: learned positions, pre-LN blocks ``x + attn(norm(x))``, ``x + mlp(norm(x))`` with
  LayerNorm and a tanh-GELU MLP, a final norm; causal.
- Llama: RoPE, pre-LN with RMSNorm, SwiGLU, grouped-query attention; causal.
- BERT: learned positions and token-type embeddings, an embedding LayerNorm, post-LN blocks
  ``norm(x + attn(x))``, ``norm(x + mlp(x))`` with exact GELU, no final norm; bidirectional.

Heads (LM, masked-LM, classification) live in :mod:`jaxlm.models.heads`.
Shapes: B batch, L sequence, D d_model. ``decode=True`` (generation) makes every attention
layer read and extend its KV cache (see :mod:`jaxlm.models.attention`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import ConfigError, ModelConfig
from jaxlm.models.attention import MultiHeadAttention
from jaxlm.models.layers import Mlp, norm, residual_std, sinusoidal

REMAT_POLICIES = {
    "full": None,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Block(nn.Module):
    """One transformer block, pre- or post-norm. Returns ``(x, None)`` so it can be scanned."""

    cfg: ModelConfig
    deterministic: bool = True
    decode: bool = False  # attention reads and extends its KV cache

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None):
        cfg = self.cfg
        pre = cfg.norm_position == "pre"
        x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))  # (B, L, D)
        attn_norm, mlp_norm = norm(cfg, "attn_norm"), norm(cfg, "mlp_norm")
        attention = MultiHeadAttention(
            num_heads=cfg.n_heads,
            num_kv_heads=cfg.n_kv_heads,
            causal=cfg.causal,
            impl=cfg.attention,
            rope_theta=cfg.rope_theta if cfg.positions == "rope" else None,
            use_bias=cfg.bias,
            out_init_std=residual_std(cfg),
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            lora=cfg.lora,
            name="attn",
        )
        drop = nn.Dropout(cfg.dropout)

        h = attn_norm(x) if pre else x
        h = attention(h, h, h, positions=positions, segment_ids=segment_ids,
                      decode=self.decode)  # (B, L, D)
        x = x + drop(h, deterministic=self.deterministic)
        x = x if pre else attn_norm(x)

        h = Mlp(cfg, name="mlp")(mlp_norm(x) if pre else x)  # (B, L, D)
        x = x + drop(h, deterministic=self.deterministic)
        x = x if pre else mlp_norm(x)
        return x, None


class Backbone(nn.Module):
    """Tokens (B, L) → hidden states (B, L, D) in f32.

    ``positions`` (B, L): position of each token within its document (default 0..L-1);
    ``segment_ids`` (B, L): packed-document ids, 0 = padding (attention never crosses them);
    ``token_types`` (B, L): sentence A/B ids where ``type_vocab_size`` > 0 (default all 0);
    ``decode``: generation with the KV cache (positions then say where each token really is).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,  # (B, L) int
        positions: jax.Array | None = None,  # (B, L)
        segment_ids: jax.Array | None = None,  # (B, L)
        token_types: jax.Array | None = None,  # (B, L)
        train: bool = False,
        decode: bool = False,
    ) -> jax.Array:
        cfg = self.cfg
        if "auto" in (cfg.dtype, cfg.attention):  # the machine decides: resolved at set-up
            raise ConfigError(
                f"model.dtype={cfg.dtype!r}, model.attention={cfg.attention!r}: 'auto' is "
                "resolved for this machine before a model is built; pass "
                "jaxlm.runtime.hardware.resolve_auto(cfg.model) (runs do this at set-up)")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)

        def table(n: int, std: float, axes: tuple[str | None, str], name: str) -> nn.Embed:
            init = nn.with_logical_partitioning(nn.initializers.normal(std), axes)
            return nn.Embed(n, cfg.d_model, embedding_init=init, param_dtype=cfg.param_dtype,
                            name=name)

        x = table(cfg.vocab_size, 0.02, ("vocab", "embed"), "wte")(tokens)  # (B, L, D)
        x = x.astype(jnp.float32)
        if cfg.positions == "learned":
            x = x + table(cfg.max_seq_len, 0.01, (None, "embed"), "wpe")(positions)
        elif cfg.positions == "sinusoidal":
            x = x + sinusoidal(positions, cfg.d_model)
        if cfg.type_vocab_size:
            types = jnp.zeros_like(tokens) if token_types is None else token_types
            x = x + table(cfg.type_vocab_size, 0.02, (None, "embed"), "wtt")(types)
        if cfg.embed_norm:
            x = norm(cfg, "embed_norm")(x)
        x = nn.Dropout(cfg.dropout)(x, deterministic=not train)

        block = Block
        if cfg.remat != "none" and not decode:  # nothing to recompute without a backward pass
            block = nn.remat(
                Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers
            )
        if cfg.scan_layers:  # one compiled block, parameters stacked on a leading 'layers' axis
            x, _ = nn.scan(
                block,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=cfg.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, deterministic=not train, decode=decode, name="blocks")(x, positions,
                                                                          segment_ids)
        else:
            for i in range(cfg.n_layers):
                x, _ = block(cfg, deterministic=not train, decode=decode, name=f"block_{i}")(
                    x, positions, segment_ids
                )

        if cfg.norm_position == "pre":
            x = norm(cfg, "final_norm")(x)
        return x.astype(jnp.float32)  # (B, L, D)
