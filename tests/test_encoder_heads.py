"""The encoder family and the heads: bidirectionality, BERT's layout, pooling, parameter
counts, and that a backbone is shared bitwise between a pretraining model and a classifier."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import ModelConfig
from jaxlm.models import DecoderLM, MaskedLM, SequenceClassifier, TokenClassifier, param_count
from jaxlm.models.heads import SequenceClassificationHead, pool
from jaxlm.runtime.hardware import resolve_auto


def tiny(**kw) -> ModelConfig:
    base = dict(d_model=32, n_layers=2, n_heads=4, vocab_size=97, max_seq_len=16, dtype="float32")
    return resolve_auto(ModelConfig(**{**base, **kw}))


def init(module, *args):
    return nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), *args)["params"])


TOKENS = jnp.asarray(np.random.default_rng(0).integers(3, 97, (2, 12)), jnp.int32)


@pytest.mark.parametrize("scan", [False, True])
def test_masked_lm_shape_and_param_count(scan):
    cfg = tiny(family="bert", scan_layers=scan)
    model = MaskedLM(cfg)
    params = init(model, TOKENS)
    assert model.apply({"params": params}, TOKENS).shape == (2, 12, 97)
    assert sum(x.size for x in jax.tree.leaves(params)) == param_count(cfg)
    assert set(params) == {"backbone", "mlm_head"}


@pytest.mark.parametrize("family,bidirectional", [("bert", True), ("gpt2", False),
                                                  ("llama", False)])
def test_encoder_sees_later_tokens_decoder_does_not(family, bidirectional):
    cfg = tiny(family=family)
    model = MaskedLM(cfg) if family == "bert" else DecoderLM(cfg)
    params = init(model, TOKENS)
    base = model.apply({"params": params}, TOKENS)
    later = TOKENS.at[:, 9].set((TOKENS[:, 9] + 1) % 97)
    out = model.apply({"params": params}, later)
    moved = not np.allclose(out[:, :9], base[:, :9])
    assert moved == bidirectional


def test_bert_backbone_maps_one_to_one_onto_hf_bert_model():
    """Every BertModel tensor has exactly one jaxlm counterpart of the same size (a later
    import is a renaming plus transposes/reshapes): 5 embedding tensors, 16 per layer, and
    the pooler (in the classification head)."""
    d, f, v, p = 32, 128, 97, 16
    cfg = tiny(family="bert")
    params = init(SequenceClassifier(cfg, 3, pooler=True), TOKENS, jnp.ones_like(TOKENS))
    back = params["backbone"]
    emb = {k: back[k] for k in ("wte", "wpe", "wtt", "embed_norm")}
    hf_embeddings = [v * d, p * d, 2 * d, d, d]  # word, position, token_type, LN weight, bias
    assert sorted(x.size for x in jax.tree.leaves(emb)) == sorted(hf_embeddings)
    layer = back["block_0"]
    # HF: q,k,v,o weight (d*d) + bias (d); attention LN (2); intermediate (d*f + f);
    # output (f*d + d); output LN (2)  → 16 tensors
    hf_layer = [d * d] * 4 + [d] * 4 + [d, d] + [d * f, f, f * d, d] + [d, d]
    assert sorted(x.size for x in jax.tree.leaves(layer)) == sorted(hf_layer)
    assert set(back) == {"wte", "wpe", "wtt", "embed_norm", "block_0", "block_1"}
    pooler = params["head"]["pooler"]
    assert sorted(x.size for x in jax.tree.leaves(pooler)) == [d, d * d]


def test_attention_pooling_learns_weights_over_real_tokens_only():
    cfg = tiny(dtype="float32")
    head = SequenceClassificationHead(cfg, num_labels=3, pooling="attention", dropout=0.0)
    h = jax.random.normal(jax.random.key(0), (2, 5, cfg.d_model))  # (B, L, D)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    params = nn.unbox(head.init(jax.random.key(1), h, mask)["params"])
    assert params["attention_pool"]["kernel"].shape == (cfg.d_model, 1)
    logits = head.apply({"params": params}, h, mask)
    noisy = h.at[0, 3:].set(1e3)  # padding positions changed: the logits are not
    np.testing.assert_allclose(head.apply({"params": params}, noisy, mask), logits, atol=1e-5)
    # a zero score everywhere is the mean of the real tokens
    flat = jax.tree.map(jnp.zeros_like, params["attention_pool"])
    mean = SequenceClassificationHead(cfg, num_labels=3, pooling="mean", dropout=0.0)
    rest = {k: v for k, v in params.items() if k != "attention_pool"}
    np.testing.assert_allclose(
        head.apply({"params": {**rest, "attention_pool": flat}}, h, mask),
        mean.apply({"params": rest}, h, mask), atol=1e-5)


def test_pooling_cls_mean_last_ignore_padding():
    h = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)  # (B, L, D)
    mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    np.testing.assert_array_equal(pool(h, mask, "cls"), h[:, 0])
    np.testing.assert_array_equal(pool(h, mask, "last"), jnp.stack([h[0, 2], h[1, 1]]))
    np.testing.assert_allclose(pool(h, mask, "mean"),
                               jnp.stack([h[0, :3].mean(0), h[1, :2].mean(0)]))
    with pytest.raises(ValueError, match="not 'attention'"):  # the head's, with its weights
        pool(h, mask, "attention")


@pytest.mark.parametrize("family", [pytest.param("gpt2", marks=pytest.mark.slow),
                                    pytest.param("llama", marks=pytest.mark.slow), "bert"])
def test_classifier_reuses_the_pretraining_backbone(family):
    """The same backbone subtree plugs into a classifier: its hidden states, hence the
    classifier's input, are computed from exactly those parameters."""
    cfg = tiny(family=family)
    lm = MaskedLM(cfg) if family == "bert" else DecoderLM(cfg)
    lm_params = init(lm, TOKENS)
    seg = jnp.ones_like(TOKENS)
    for clf in (SequenceClassifier(cfg, 5, pooling="mean"), TokenClassifier(cfg, 4)):
        params = init(clf, TOKENS, seg)
        assert jax.tree.structure(params["backbone"]) == jax.tree.structure(lm_params["backbone"])
        swapped = {**params, "backbone": lm_params["backbone"]}
        a = clf.apply({"params": swapped}, TOKENS, seg)
        b = clf.apply({"params": {**swapped, "backbone": jax.tree.map(lambda x: x * 1.01,
                                                                     lm_params["backbone"])}},
                      TOKENS, seg)
        assert a.shape[-1] in (4, 5) and not np.allclose(a, b)


def test_masked_lm_loss_on_gathered_positions_equals_the_loss_on_every_position():
    """The task runs the vocabulary head on the selected positions only; the loss, its
    gradient and the sums are those of the head on every position (the rest weigh 0)."""
    from jaxlm.tasks import MaskedLM as MaskedLMTask
    from jaxlm.tasks.causal_lm import token_cross_entropy_sums

    cfg = tiny(family="bert")
    task = MaskedLMTask(cfg, mlm_probability=0.15)
    rng = np.random.default_rng(1)
    weights = np.zeros((2, 16), np.float32)
    weights[0, [1, 5, 6]] = 1.0  # at most max_predictions(16, 0.15) = 16 per row
    weights[1, [0, 15]] = 1.0
    batch = {"inputs": jnp.asarray(rng.integers(3, 97, (2, 16)), jnp.int32),
             "targets": jnp.asarray(rng.integers(3, 97, (2, 16)), jnp.int32),
             "positions": jnp.tile(jnp.arange(16, dtype=jnp.int32), (2, 1)),
             "segment_ids": jnp.ones((2, 16), jnp.int32), "weights": jnp.asarray(weights)}
    params = init(task.model, batch["inputs"])

    def every_position(p):
        logits = task.apply(p, batch)  # (B, L, V)
        return token_cross_entropy_sums(logits, batch["targets"], batch["weights"], 0.0)

    (loss, sums), grads = jax.value_and_grad(lambda p: task.loss_sums(p, batch), has_aux=True)(
        params)
    (ref, ref_sums), ref_grads = jax.value_and_grad(every_position, has_aux=True)(params)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    for k in ref_sums:
        np.testing.assert_allclose(sums[k], ref_sums[k], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
