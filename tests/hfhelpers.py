"""Shared by the Hugging Face tests: tiny random `transformers` models saved locally (nothing
is fetched from a hub), and jaxlm forwards of HF weights loaded onto a sharded mesh."""

from __future__ import annotations

import shutil
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxlm.config import Config
from jaxlm.hf.checkpoint import HFCheckpoint
from jaxlm.hf.load import load_hf_params
from jaxlm.models import Backbone, DecoderLM, MaskedLM
from jaxlm.runtime.hardware import resolve_auto
from jaxlm.sharding import activate, logical_rules, logical_to_sharding, make_mesh

ROOT = Path(__file__).parents[1]
DEFAULT_TOKENIZER = ROOT / "jaxlm" / "assets" / "tokenizer.json"  # 4096 byte-level BPE
WORDS = ("the a of and to in is it that was he for on are with as i his they be at apple "
         "pear plum fig zebra lion gnu yak ocean wave tide reef hello world quick brown fox "
         "jump ##s ##ed ##ing").split()
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS,
              *"abcdefghijklmnopqrstuvwxyz.,!?"]
BERT_VOCAB += [f"[unused{i}]" for i in range(-len(BERT_VOCAB) % 16)]  # shards evenly
TOL = 1e-4  # max abs difference in f32 (the bar)


def need_torch():
    """torch and transformers, or skip: CI's Python 3.11 leg has them (the test extra)."""
    torch = pytest.importorskip("torch", reason="parity tests need torch (pip install "
                                "-e '.[test]' on Python < 3.12)")
    transformers = pytest.importorskip("transformers", reason="parity tests need transformers>=5")
    return torch, transformers


def hf_config(kind: str, **kw):
    """A small random-shaped config of ``kind`` (gpt2, llama or bert)."""
    _, tf = need_torch()
    if kind == "gpt2":
        base = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=4096, n_positions=64,
                    bos_token_id=1, eos_token_id=1)
        return tf.GPT2Config(**{**base, **kw}), tf.GPT2LMHeadModel
    if kind == "llama":
        base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=48, vocab_size=4096,
                    max_position_embeddings=64, rms_norm_eps=1e-6, bos_token_id=1,
                    eos_token_id=1, rope_parameters={"rope_type": "default",
                                                     "rope_theta": 500.0})
        return tf.LlamaConfig(**{**base, **kw}), tf.LlamaForCausalLM
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=48, vocab_size=len(BERT_VOCAB), max_position_embeddings=64,
                layer_norm_eps=1e-12, type_vocab_size=2)
    return tf.BertConfig(**{**base, **kw}), tf.BertForMaskedLM


def save_tiny(kind: str, directory: Path, seed: int = 0, model_class=None, **kw) -> Path:
    """A tiny `transformers` model saved to ``directory`` with its tokenizer files. Every
    parameter is perturbed, so norms and biases are not 1 and 0 and a misplaced tensor shows."""
    torch, _ = need_torch()
    config, cls = hf_config(kind, **kw)
    torch.manual_seed(seed)
    model = (model_class or cls)(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(directory)
    if kind == "bert":  # the slow tokenizer's files only: jaxlm rebuilds WordPiece from them
        (directory / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
        (directory / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    else:
        shutil.copy(DEFAULT_TOKENIZER, directory / "tokenizer.json")
    return directory


def hf_model(directory: Path, cls_name: str | None = None):
    """The saved model, loaded back by `transformers` (eager attention, eval mode)."""
    _, tf = need_torch()
    cls = getattr(tf, cls_name) if cls_name else tf.AutoModel
    return cls.from_pretrained(directory, attn_implementation="eager").eval()


def mesh_and_rules(shape=(2, 2, 2)):
    d, f, t = shape
    cfg = Config(**{"mesh": {"data": d, "fsdp": f, "tensor": t}})
    return make_mesh(cfg, jax.devices()[: d * f * t]), logical_rules(cfg.mesh)


def jaxlm_model(directory: Path, what: str = "logits"):
    """(model config in f32, the jaxlm module): the pretraining model, or the backbone."""
    with HFCheckpoint(directory) as ckpt:
        model = resolve_auto(ckpt.model.model_copy(update={"dtype": "float32"}))
    if what == "hidden":
        return model, Backbone(model)
    return model, (MaskedLM(model) if model.is_encoder else DecoderLM(model))


def load_sharded(directory: Path, module, mesh, rules, tokens: np.ndarray,
                 subtree: str | None = None):
    """HF weights loaded straight onto ``mesh`` with the model's shardings (``subtree``:
    what ``module`` is of the jaxlm tree, e.g. ``backbone``)."""
    boxed = jax.eval_shape(lambda r: module.init(r, tokens)["params"], jax.random.PRNGKey(0))
    shardings = logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nn.unbox(boxed), shardings)
    return load_hf_params(directory, abstract, subtree)


def jaxlm_forward(directory: Path, tokens: np.ndarray, segment_ids: np.ndarray | None = None,
                  what: str = "logits", mesh_shape=(2, 2, 2)) -> np.ndarray:
    """Logits (or backbone hidden states) of the HF model at ``directory``, run in jaxlm on a
    sharded mesh. ``segment_ids`` (B, L): 1 for real tokens, 0 for padding."""
    _, module = jaxlm_model(directory, what)
    mesh, rules = mesh_and_rules(mesh_shape)
    params = load_sharded(directory, module, mesh, rules, tokens,
                          "backbone" if what == "hidden" else None)
    kw = {} if segment_ids is None else {"segment_ids": segment_ids}
    with activate(mesh, rules):
        out = jax.jit(lambda p, x: module.apply({"params": p}, x, **kw))(params, tokens)
    return np.asarray(out)


def torch_forward(model, tokens: np.ndarray, mask: np.ndarray | None = None,
                  what: str = "logits") -> np.ndarray:
    torch, _ = need_torch()
    kw = {} if mask is None else {"attention_mask": torch.tensor(mask, dtype=torch.long)}
    with torch.no_grad():
        out = model(torch.tensor(tokens, dtype=torch.long), **kw)
    return (out.logits if what == "logits" else out.last_hidden_state).numpy()


def tiny_export(directory: Path, family: str, **model: object) -> Path:
    """A jaxlm export of a tiny random model (no torch needed): model.safetensors with jaxlm
    keys, the run config and the default tokenizer."""
    from safetensors.numpy import save_file

    from jaxlm.hf.convert import model_shapes

    cfg = Config(**{"model": {"family": family, "d_model": 32, "n_layers": 2, "n_heads": 4,
                              "vocab_size": 4096, "max_seq_len": 64, **model},
                    "data": {"mode": "mlm" if family == "bert" else "pack", "seq_len": 64,
                             "tokenizer": str(DEFAULT_TOKENIZER)}})
    rng = np.random.default_rng(0)
    shapes = {k: s for k, s in model_shapes(cfg.model).items() if not k.startswith("head/")}
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in shapes.items()},
              str(directory / "model.safetensors"), metadata={"format": "jaxlm"})
    (directory / "config.json").write_text(cfg.to_json())
    shutil.copy(DEFAULT_TOKENIZER, directory / "tokenizer.json")
    return directory
