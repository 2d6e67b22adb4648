"""Model FLOPs: the one place that counts them (for MFU, TFLOP/s and the benchmarks)."""

from __future__ import annotations

from jaxlm.config import ModelConfig


def flops_per_token(cfg: ModelConfig, seq_len: int, training: bool = True,
                    head_positions: int | None = None) -> float:
    """Matmul FLOPs per token of a forward (+ backward when ``training``) pass.

    Counts 2 FLOPs per multiply-add of every matmul: the Q/K/V/out projections, the MLP, the
    output head (an encoder's masked-LM head: its transform too), and attention's QKᵀ and
    AV (full L×L, as PaLM/MaxText count it). Norms, softmax and embedding lookups are
    ignored. Training costs 3× the forward (backward ≈ 2×). ``head_positions``: how many of
    a row's ``seq_len`` positions the head runs on (masked-LM pretraining runs it on the
    selected ones only: :func:`jaxlm.data.mlm.head_positions`); None = all.
    """
    d, dh, f = cfg.d_model, cfg.head_dim, cfg.d_ff
    qkvo = 2 * d * (cfg.n_heads * dh) + 2 * d * (cfg.n_kv_heads * dh)  # q,out + k,v
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f
    attn = 2 * seq_len * cfg.n_heads * dh  # QK^T and AV, per query token
    per_layer = 2 * (qkvo + mlp + attn)
    head = 2 * d * cfg.vocab_size + (0 if cfg.causal else 2 * d * d)
    if head_positions is not None:
        head = head * min(head_positions, seq_len) / seq_len
    forward = cfg.n_layers * per_layer + head
    return float(3 * forward if training else forward)


def param_count(cfg: ModelConfig) -> int:
    """Parameters of the backbone plus its pretraining head (the LM head of a causal model,
    the masked-LM head of an encoder); checked against real params in tests."""
    d, dh, f, v = cfg.d_model, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    q_out, kv = cfg.n_heads * dh, cfg.n_kv_heads * dh
    swiglu, b = cfg.mlp == "swiglu", int(bool(cfg.bias))
    normp = 2 * d if cfg.norm == "layernorm" else d
    attn = 2 * d * q_out + 2 * d * kv + b * (q_out + 2 * kv + d)
    mlp = (3 if swiglu else 2) * d * f + b * ((2 * f if swiglu else f) + d)
    layer = attn + mlp + 2 * normp
    emb = v * d + (cfg.max_seq_len * d if cfg.positions == "learned" else 0)
    emb += cfg.type_vocab_size * d + (normp if cfg.embed_norm else 0)
    final = normp if cfg.norm_position == "pre" else 0
    if cfg.causal:
        head = 0 if cfg.tie_embeddings else d * v
    else:  # masked-LM head: transform dense + norm, decoder bias (decoder tied)
        head = d * d + d + normp + v
    return cfg.n_layers * layer + emb + final + head
