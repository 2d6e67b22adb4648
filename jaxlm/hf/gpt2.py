"""GPT-2 (``model_type: gpt2``) ⇄ jaxlm's ``gpt2`` family.

HF names (base model ``GPT2Model``; ``GPT2LMHeadModel`` nests it under ``transformer.``)::

    wte.weight (V, D)  wpe.weight (P, D)  ln_f.{weight,bias}
    h.{i}.ln_1 / ln_2.{weight,bias}
    h.{i}.attn.c_attn.{weight (D, 3D), bias (3D,)}   fused query | key | value, Conv1D
    h.{i}.attn.c_proj.{weight (D, D), bias}          Conv1D weights are (in, out)
    h.{i}.mlp.c_fc.{weight (D, F), bias}  h.{i}.mlp.c_proj.{weight (F, D), bias}
    lm_head.weight (V, D)                            only when untied

The fused ``c_attn`` is split into jaxlm's query/key/value kernels (D, H, Dh) on import and
merged back on export.
"""

from __future__ import annotations

from typing import Any

from jaxlm.hf.spec import Family, HFError, Rule, require, setting

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
               "gelu": "gelu"}


def config_from_hf(c: dict[str, Any]) -> dict[str, Any]:
    require(c, "vocab_size", "n_embd", "n_layer", "n_head", "n_positions")
    setting(c, "scale_attn_weights", True, (True,), "gpt2")
    setting(c, "scale_attn_by_inverse_layer_idx", False, (False,), "gpt2")
    setting(c, "add_cross_attention", False, (False,), "gpt2")
    act = setting(c, "activation_function", "gelu_new", tuple(ACTIVATIONS), "gpt2")
    return {"family": "gpt2", "vocab_size": c["vocab_size"], "d_model": c["n_embd"],
            "n_layers": c["n_layer"], "n_heads": c["n_head"], "n_kv_heads": c["n_head"],
            "d_ff": c.get("n_inner") or 4 * c["n_embd"], "max_seq_len": c["n_positions"],
            "mlp": ACTIVATIONS[act], "norm_eps": c.get("layer_norm_epsilon", 1e-5),
            "tie_embeddings": c.get("tie_word_embeddings", True),
            "dropout": c.get("resid_pdrop", 0.0)}


def config_to_hf(m: Any) -> dict[str, Any]:
    if m.n_kv_heads != m.n_heads:
        raise HFError(f"model.n_kv_heads={m.n_kv_heads} (grouped-query attention) cannot be "
                      f"written as GPT-2, which has n_heads={m.n_heads} key/value heads")
    return {"n_embd": m.d_model, "n_layer": m.n_layers, "n_head": m.n_heads, "n_inner": m.d_ff,
            "n_positions": m.max_seq_len, "n_ctx": m.max_seq_len, "vocab_size": m.vocab_size,
            "activation_function": "gelu_new" if m.mlp == "gelu_tanh" else "gelu",
            "layer_norm_epsilon": m.norm_eps, "tie_word_embeddings": m.tie_embeddings,
            "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": 0.0,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False}


def rules(m: Any) -> list[Rule]:
    out = [Rule("backbone/wte/embedding", "wte.weight"),
           Rule("backbone/wpe/embedding", "wpe.weight"),
           Rule("backbone/final_norm/scale", "ln_f.weight"),
           Rule("backbone/final_norm/bias", "ln_f.bias")]
    for i in range(m.n_layers):
        b, h = f"backbone/block_{i}", f"h.{i}"
        out += [Rule(f"{b}/attn_norm/scale", f"{h}.ln_1.weight"),
                Rule(f"{b}/attn_norm/bias", f"{h}.ln_1.bias"),
                Rule(f"{b}/mlp_norm/scale", f"{h}.ln_2.weight"),
                Rule(f"{b}/mlp_norm/bias", f"{h}.ln_2.bias")]
        for j, name in enumerate(("query", "key", "value")):
            out += [Rule(f"{b}/attn/{name}/kernel", f"{h}.attn.c_attn.weight", "conv1d",
                         part=(j, 3)),
                    Rule(f"{b}/attn/{name}/bias", f"{h}.attn.c_attn.bias", "flat", part=(j, 3))]
        out += [Rule(f"{b}/attn/out/kernel", f"{h}.attn.c_proj.weight", "conv1d", n_in=2),
                Rule(f"{b}/attn/out/bias", f"{h}.attn.c_proj.bias"),
                Rule(f"{b}/mlp/fc/kernel", f"{h}.mlp.c_fc.weight", "conv1d"),
                Rule(f"{b}/mlp/fc/bias", f"{h}.mlp.c_fc.bias"),
                Rule(f"{b}/mlp/proj/kernel", f"{h}.mlp.c_proj.weight", "conv1d"),
                Rule(f"{b}/mlp/proj/bias", f"{h}.mlp.c_proj.bias")]
    if not m.tie_embeddings:
        out.append(Rule("lm_head/kernel", "lm_head.weight", "linear"))
    return out


def architecture(m: Any, heads: set[str]) -> str:
    """A tied head needs no weights, so a decoder is always exported with its LM head."""
    return "GPT2LMHeadModel" if m.tie_embeddings or "lm_head" in heads else "GPT2Model"


FAMILY = Family(
    name="gpt2", model_type="gpt2", architectures=("GPT2LMHeadModel", "GPT2Model"),
    base="GPT2Model", prefix="transformer", config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, rules=rules, architecture=architecture,
    fixed={"norm": ("layernorm",), "norm_position": ("pre",), "mlp": ("gelu_tanh", "gelu"),
           "bias": (True,), "causal": (True,), "positions": ("learned",),
           "type_vocab_size": (0,), "embed_norm": (False,)},
    # Old checkpoints carry the causal-mask buffers; a tied lm_head may be saved as a copy.
    ignored=(r"h\.\d+\.attn\.(masked_)?bias", r"lm_head\.weight"),
)
