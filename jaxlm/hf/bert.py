"""BERT (``model_type: bert``; MiniLM is one) ⇄ jaxlm's ``bert`` family.

HF names (base model ``BertModel``; ``BertForMaskedLM`` / ``BertForPreTraining`` nest it
under ``bert.``)::

    embeddings.{word,position,token_type}_embeddings.weight  embeddings.LayerNorm
    encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias}   nn.Linear (out, in)
    encoder.layer.{i}.attention.output.dense / .LayerNorm              post-LN
    encoder.layer.{i}.intermediate.dense  encoder.layer.{i}.output.dense / .LayerNorm
    pooler.dense                                          → jaxlm head/pooler (fine-tuning)
    qa_outputs (BertForQuestionAnswering, top level)      → a span run's head/classifier
    cls.predictions.transform.dense / .LayerNorm, cls.predictions.bias → jaxlm mlm_head
    cls.predictions.decoder.weight                        tied to the word embeddings

The pooler belongs to jaxlm's sequence-classification head (``finetune.pooler=true``) and
``qa_outputs`` to its span head (``finetune.problem=span``), so a fine-tuned
``BertForQuestionAnswering`` directory is read as a span backbone with its head; the
next-sentence head of ``BertForPreTraining`` has no place in jaxlm and is reported unused.
"""

from __future__ import annotations

from typing import Any

from jaxlm.hf.spec import Family, HFError, Rule, require, setting

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def config_from_hf(c: dict[str, Any]) -> dict[str, Any]:
    require(c, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size")
    setting(c, "position_embedding_type", "absolute", ("absolute",), "bert")
    setting(c, "is_decoder", False, (False,), "bert")
    setting(c, "add_cross_attention", False, (False,), "bert")
    setting(c, "tie_word_embeddings", True, (True,), "bert")
    act = setting(c, "hidden_act", "gelu", tuple(ACTIVATIONS), "bert")
    types = c.get("type_vocab_size", 2)
    return {"family": "bert", "vocab_size": c["vocab_size"], "d_model": c["hidden_size"],
            "n_layers": c["num_hidden_layers"], "n_heads": c["num_attention_heads"],
            "n_kv_heads": c["num_attention_heads"], "d_ff": c["intermediate_size"],
            "max_seq_len": c.get("max_position_embeddings", 512), "mlp": ACTIVATIONS[act],
            "type_vocab_size": types, "norm_eps": c.get("layer_norm_eps", 1e-12),
            "tie_embeddings": True, "dropout": c.get("hidden_dropout_prob", 0.0)}


def config_to_hf(m: Any) -> dict[str, Any]:
    if m.type_vocab_size == 0 or m.n_kv_heads != m.n_heads:
        what = ("model.type_vocab_size=0" if m.type_vocab_size == 0
                else f"model.n_kv_heads={m.n_kv_heads}")
        raise HFError(f"{what} cannot be written as a Hugging Face BERT model")
    return {"hidden_size": m.d_model, "num_hidden_layers": m.n_layers,
            "num_attention_heads": m.n_heads, "intermediate_size": m.d_ff,
            "max_position_embeddings": m.max_seq_len, "vocab_size": m.vocab_size,
            "type_vocab_size": m.type_vocab_size, "layer_norm_eps": m.norm_eps,
            "hidden_act": "gelu" if m.mlp == "gelu" else "gelu_new",
            "hidden_dropout_prob": m.dropout, "attention_probs_dropout_prob": 0.0,
            "position_embedding_type": "absolute", "tie_word_embeddings": True}


def rules(m: Any) -> list[Rule]:
    e = "embeddings"
    out = [Rule("backbone/wte/embedding", f"{e}.word_embeddings.weight"),
           Rule("backbone/wpe/embedding", f"{e}.position_embeddings.weight"),
           Rule("backbone/wtt/embedding", f"{e}.token_type_embeddings.weight"),
           Rule("backbone/embed_norm/scale", f"{e}.LayerNorm.weight"),
           Rule("backbone/embed_norm/bias", f"{e}.LayerNorm.bias")]
    for i in range(m.n_layers):
        b, h = f"backbone/block_{i}", f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            out += [Rule(f"{b}/attn/{name}/kernel", f"{h}.attention.self.{name}.weight", "linear"),
                    Rule(f"{b}/attn/{name}/bias", f"{h}.attention.self.{name}.bias", "flat")]
        out += [Rule(f"{b}/attn/out/kernel", f"{h}.attention.output.dense.weight", "linear",
                     n_in=2),
                Rule(f"{b}/attn/out/bias", f"{h}.attention.output.dense.bias"),
                Rule(f"{b}/attn_norm/scale", f"{h}.attention.output.LayerNorm.weight"),
                Rule(f"{b}/attn_norm/bias", f"{h}.attention.output.LayerNorm.bias"),
                Rule(f"{b}/mlp/fc/kernel", f"{h}.intermediate.dense.weight", "linear"),
                Rule(f"{b}/mlp/fc/bias", f"{h}.intermediate.dense.bias"),
                Rule(f"{b}/mlp/proj/kernel", f"{h}.output.dense.weight", "linear"),
                Rule(f"{b}/mlp/proj/bias", f"{h}.output.dense.bias"),
                Rule(f"{b}/mlp_norm/scale", f"{h}.output.LayerNorm.weight"),
                Rule(f"{b}/mlp_norm/bias", f"{h}.output.LayerNorm.bias")]
    p = "cls.predictions"
    out += [Rule("head/pooler/kernel", "pooler.dense.weight", "linear"),
            Rule("head/pooler/bias", "pooler.dense.bias"),
            Rule("head/classifier/kernel", "qa_outputs.weight", "linear"),
            Rule("head/classifier/bias", "qa_outputs.bias"),
            Rule("mlm_head/transform/kernel", f"{p}.transform.dense.weight", "linear"),
            Rule("mlm_head/transform/bias", f"{p}.transform.dense.bias"),
            Rule("mlm_head/transform_norm/scale", f"{p}.transform.LayerNorm.weight"),
            Rule("mlm_head/transform_norm/bias", f"{p}.transform.LayerNorm.bias"),
            Rule("mlm_head/bias", f"{p}.bias")]
    return out


def architecture(m: Any, heads: set[str]) -> str:
    return "BertForMaskedLM" if "mlm_head" in heads else "BertModel"


FAMILY = Family(
    name="bert", model_type="bert",
    architectures=("BertModel", "BertForMaskedLM", "BertForPreTraining",
                   "BertForQuestionAnswering"),
    base="BertModel", prefix="bert", config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, rules=rules, architecture=architecture,
    fixed={"norm": ("layernorm",), "norm_position": ("post",), "mlp": ("gelu", "gelu_tanh"),
           "bias": (True,), "causal": (False,), "positions": ("learned",),
           "embed_norm": (True,), "tie_embeddings": (True,)},
    # The decoder is tied to the word embeddings and its bias to cls.predictions.bias.
    ignored=(r"embeddings\.position_ids", r"cls\.predictions\.decoder\.(weight|bias)"),
    unused=(r"cls\.seq_relationship\.(weight|bias)",),
)
