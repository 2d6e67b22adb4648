"""Llama (``model_type: llama``) ⇄ jaxlm's ``llama`` family.

HF names (base model ``LlamaModel``; ``LlamaForCausalLM`` nests it under ``model.``)::

    embed_tokens.weight (V, D)  norm.weight (D,)  lm_head.weight (V, D) unless tied
    layers.{i}.input_layernorm.weight  layers.{i}.post_attention_layernorm.weight
    layers.{i}.self_attn.{q,k,v,o}_proj.weight   nn.Linear (out, in); k/v have Hkv heads
    layers.{i}.mlp.{gate,up,down}_proj.weight

HF's Llama is stored in rotate-half RoPE order, as jaxlm's RoPE computes it, so the query
and key kernels need no permutation: (H·Dh, D) → transpose → (D, H, Dh).
"""

from __future__ import annotations

from typing import Any

from jaxlm.hf.spec import Family, HFError, Rule, require, setting


def rope_theta(c: dict[str, Any]) -> float:
    """The RoPE base; any RoPE scaling (llama3, linear, dynamic, yarn...) is refused."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise HFError(f"config.json sets RoPE scaling rope_type={kind!r}, which jaxlm's llama "
                      "model cannot represent (supported: 'default'); refusing to import it")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFError("config.json sets partial_rotary_factor="
                      f"{params['partial_rotary_factor']}; jaxlm rotates the whole head")
    return float(params.get("rope_theta", c.get("rope_theta", 10000.0)))


def config_from_hf(c: dict[str, Any]) -> dict[str, Any]:
    require(c, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size")
    d, h = c["hidden_size"], c["num_attention_heads"]
    setting(c, "hidden_act", "silu", ("silu",), "llama")
    setting(c, "head_dim", d // h, (d // h, None), "llama")
    attn_bias = c.get("attention_bias", False)
    if c.get("mlp_bias", False) != attn_bias:
        raise HFError(f"config.json sets attention_bias={attn_bias} but mlp_bias="
                      f"{c.get('mlp_bias', False)}; jaxlm's model.bias covers both")
    return {"family": "llama", "vocab_size": c["vocab_size"], "d_model": d,
            "n_layers": c["num_hidden_layers"], "n_heads": h,
            "n_kv_heads": c.get("num_key_value_heads") or h, "d_ff": c["intermediate_size"],
            "max_seq_len": c.get("max_position_embeddings", 2048), "bias": bool(attn_bias),
            "norm_eps": c.get("rms_norm_eps", 1e-6), "rope_theta": rope_theta(c),
            "tie_embeddings": c.get("tie_word_embeddings", False),
            "dropout": c.get("attention_dropout", 0.0)}


def config_to_hf(m: Any) -> dict[str, Any]:
    return {"hidden_size": m.d_model, "intermediate_size": m.d_ff,
            "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
            "num_key_value_heads": m.n_kv_heads, "head_dim": m.head_dim,
            "max_position_embeddings": m.max_seq_len, "vocab_size": m.vocab_size,
            "rms_norm_eps": m.norm_eps, "hidden_act": "silu",
            "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
            "tie_word_embeddings": m.tie_embeddings, "attention_bias": m.bias,
            "mlp_bias": m.bias, "attention_dropout": 0.0}


def rules(m: Any) -> list[Rule]:
    out = [Rule("backbone/wte/embedding", "embed_tokens.weight"),
           Rule("backbone/final_norm/scale", "norm.weight")]
    for i in range(m.n_layers):
        b, h = f"backbone/block_{i}", f"layers.{i}"
        out += [Rule(f"{b}/attn_norm/scale", f"{h}.input_layernorm.weight"),
                Rule(f"{b}/mlp_norm/scale", f"{h}.post_attention_layernorm.weight")]
        for name, hf in (("query", "q"), ("key", "k"), ("value", "v")):
            out.append(Rule(f"{b}/attn/{name}/kernel", f"{h}.self_attn.{hf}_proj.weight",
                            "linear"))
            if m.bias:
                out.append(Rule(f"{b}/attn/{name}/bias", f"{h}.self_attn.{hf}_proj.bias", "flat"))
        out.append(Rule(f"{b}/attn/out/kernel", f"{h}.self_attn.o_proj.weight", "linear", n_in=2))
        for name, hf in (("gate", "gate"), ("up", "up"), ("proj", "down")):
            out.append(Rule(f"{b}/mlp/{name}/kernel", f"{h}.mlp.{hf}_proj.weight", "linear"))
            if m.bias:
                out.append(Rule(f"{b}/mlp/{name}/bias", f"{h}.mlp.{hf}_proj.bias"))
        if m.bias:
            out.append(Rule(f"{b}/attn/out/bias", f"{h}.self_attn.o_proj.bias"))
    if not m.tie_embeddings:
        out.append(Rule("lm_head/kernel", "lm_head.weight", "linear"))
    return out


def architecture(m: Any, heads: set[str]) -> str:
    return "LlamaForCausalLM" if m.tie_embeddings or "lm_head" in heads else "LlamaModel"


FAMILY = Family(
    name="llama", model_type="llama", architectures=("LlamaForCausalLM", "LlamaModel"),
    base="LlamaModel", prefix="model", config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, rules=rules, architecture=architecture,
    fixed={"norm": ("rmsnorm",), "norm_position": ("pre",), "mlp": ("swiglu",),
           "causal": (True,), "positions": ("rope",), "type_vocab_size": (0,),
           "embed_norm": (False,)},
    ignored=(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"lm_head\.weight"),
)
