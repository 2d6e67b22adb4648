"""Model FLOPs: the one place that counts them (for MFU, TFLOP/s and the benchmarks)."""

from __future__ import annotations

from jaxlm.config import ModelConfig


def flops_per_token(cfg: ModelConfig, seq_len: int, training: bool = True) -> float:
    """Matmul FLOPs per token of a forward (+ backward when ``training``) pass.

    Counts 2 FLOPs per multiply-add of every matmul: the Q/K/V/out projections, the MLP, the
    output head, and attention's QKᵀ and AV (full L×L, as PaLM/MaxText count it). Norms,
    softmax and embeddings lookups are ignored. Training costs 3× the forward (backward ≈ 2×).
    """
    d, dh, f = cfg.d_model, cfg.head_dim, cfg.d_ff
    qkvo = 2 * d * (cfg.n_heads * dh) + 2 * d * (cfg.n_kv_heads * dh)  # q,out + k,v
    mlp = (3 if cfg.family == "llama" else 2) * d * f
    attn = 2 * seq_len * cfg.n_heads * dh  # QK^T and AV, per query token
    per_layer = 2 * (qkvo + mlp + attn)
    forward = cfg.n_layers * per_layer + 2 * d * cfg.vocab_size
    return float(3 * forward if training else forward)


def param_count(cfg: ModelConfig) -> int:
    """Parameter count implied by the config (checked against real params in tests)."""
    d, dh, f, v = cfg.d_model, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    gpt2 = cfg.family == "gpt2"
    attn = 2 * d * cfg.n_heads * dh + 2 * d * cfg.n_kv_heads * dh
    attn_b = (cfg.n_heads * dh + 2 * cfg.n_kv_heads * dh + d) if gpt2 else 0
    mlp = 3 * d * f if not gpt2 else 2 * d * f + f + d
    norms = 2 * (2 * d if gpt2 else d)
    layer = attn + attn_b + mlp + norms
    emb = v * d + (cfg.max_seq_len * d if cfg.positions == "learned" else 0)
    head = 0 if cfg.tie_embeddings else d * v
    final = 2 * d if gpt2 else d
    return cfg.n_layers * layer + emb + head + final
