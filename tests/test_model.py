"""The decoder LM: shapes, causality, segment masking, implementations, counts."""

import doctest

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_matmul import dot_generals

import jaxlm.models.attention as attention_mod
from jaxlm.config import ConfigError, ModelConfig
from jaxlm.models import DecoderLM, MultiHeadAttention, flops_per_token, param_count
from jaxlm.models.attention import attention_mask
from jaxlm.runtime.hardware import resolve_auto


def tiny(**kw) -> ModelConfig:
    base = dict(d_model=32, n_layers=2, n_heads=4, vocab_size=97, max_seq_len=16, dtype="float32")
    return resolve_auto(ModelConfig(**{**base, **kw}))


class Jitted:
    """A model whose init/apply are jitted: much faster than op-by-op on CPU."""

    def __init__(self, cfg):
        self.module = DecoderLM(cfg)
        self.init = jax.jit(self.module.init)
        self.apply = jax.jit(self.module.apply)


def logits_of(cfg, tokens, **kw):
    model = Jitted(cfg)
    params = model.init(jax.random.PRNGKey(0), tokens)["params"]
    return model, params, model.apply({"params": params}, tokens, **kw)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("scan", [False, True])
def test_output_shape_and_param_count(family, scan):
    cfg = tiny(family=family, scan_layers=scan, remat="full" if scan else "none",
               n_kv_heads=2 if family == "llama" else None)
    tokens = jnp.zeros((3, 10), jnp.int32)
    _, params, logits = logits_of(cfg, tokens)
    assert logits.shape == (3, 10, 97) and logits.dtype == jnp.float32
    n = sum(x.size for x in jax.tree.leaves(nn.unbox(params)))
    assert n == param_count(cfg)


@pytest.mark.parametrize("family,positions", [("gpt2", None), ("llama", None),
                                              ("gpt2", "sinusoidal")])
def test_causal(family, positions):
    cfg = tiny(family=family, positions=positions)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 97, (2, 12)), jnp.int32)
    model, params, base = logits_of(cfg, tokens)
    for t in [3, 7, 11]:
        changed = tokens.at[:, t].set((tokens[:, t] + 1) % 97)
        out = model.apply({"params": params}, changed)
        np.testing.assert_array_equal(out[:, :t], base[:, :t])  # earlier logits untouched
        assert not np.allclose(out[:, t], base[:, t])  # the changed position itself does move


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_segment_mask_isolates_documents(family):
    cfg = tiny(family=family)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 97, 5), rng.integers(0, 97, 7)
    packed = jnp.asarray(np.concatenate([a, b])[None], jnp.int32)  # (1, 12)
    seg = jnp.asarray([[1] * 5 + [2] * 7])
    pos = jnp.asarray([list(range(5)) + list(range(7))])
    model, params, out = logits_of(cfg, packed, positions=pos, segment_ids=seg)
    alone = model.apply({"params": params}, jnp.asarray(b[None], jnp.int32))
    np.testing.assert_allclose(out[:, 5:], alone, atol=1e-5)
    # and doc A does not see doc B: changing B leaves A's logits bit-identical
    other = packed.at[0, 8].set((packed[0, 8] + 1) % 97)
    out2 = model.apply({"params": params}, other, positions=pos, segment_ids=seg)
    np.testing.assert_array_equal(out2[:, :5], out[:, :5])


def test_attention_implementations_agree():
    cfg_x, cfg_d = tiny(family="llama", n_kv_heads=2), tiny(family="llama", n_kv_heads=2,
                                                               attention="dot_product")
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 97, (2, 12)), jnp.int32)
    seg = jnp.asarray([[1] * 6 + [2] * 6, [1] * 12])
    model, params, out = logits_of(cfg_x, tokens, segment_ids=seg)
    out_d = Jitted(cfg_d).apply({"params": params}, tokens, segment_ids=seg)
    np.testing.assert_allclose(out, out_d, atol=2e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_gradients_agree_and_bf16_backward_runs_in_bf16(dtype):
    """The written-out core's own backward (``_attend``) against JAX's differentiation of
    ``jax.nn.dot_product_attention``: GQA, causal + segment mask."""
    kq, kk, kv, kc = jax.random.split(jax.random.key(4), 4)
    q = jax.random.normal(kq, (2, 6, 4, 8), dtype)  # (B, L, H, Dh)
    k, v = (jax.random.normal(x, (2, 6, 2, 8), dtype) for x in (kk, kv))  # Hkv = 2
    cot = jax.random.normal(kc, (2, 6, 4, 8), jnp.float32)
    mask = attention_mask(6, 6, True, jnp.asarray([[1, 1, 1, 2, 2, 2], [1] * 6]))

    def loss(impl):
        return lambda q, k, v: jnp.sum(
            attention_mod.dot_product_attention(q, k, v, mask, impl).astype(jnp.float32) * cot)

    got = jax.grad(loss("xla"), (0, 1, 2))(q, k, v)
    want = jax.grad(loss("dot_product"), (0, 1, 2))(q, k, v)
    tol = 1e-5 if dtype == jnp.float32 else 0.1
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        np.testing.assert_allclose(g.astype(jnp.float32), w.astype(jnp.float32), atol=tol,
                                   rtol=tol)
    if dtype == jnp.bfloat16:
        dots = list(dot_generals(jax.make_jaxpr(jax.grad(loss("xla"), (0, 1, 2)))(q, k, v).jaxpr))
        assert len(dots) == 6  # QKᵀ, PV; dV, dP, dQ, dK
        assert all(x.aval.dtype == jnp.bfloat16 for e in dots for x in e.invars)


@pytest.mark.slow
def test_causal_blocks_skip_only_masked_scores():
    """The causal core over query blocks (L = 512: 4 blocks) equals the one-block core, with
    packed segments, values and gradients."""
    kq, kk, kv = jax.random.split(jax.random.key(5), 3)
    q = jax.random.normal(kq, (2, 512, 4, 8))
    k, v = (jax.random.normal(x, (2, 512, 2, 8)) for x in (kk, kv))
    seg = jnp.asarray([[1] * 200 + [2] * 312, [1] * 512])
    mask = attention_mask(512, 512, True, seg)

    def f(causal):
        return lambda q, k, v: attention_mod.dot_product_attention(q, k, v, mask, "xla", causal)

    np.testing.assert_allclose(f(True)(q, k, v), f(False)(q, k, v), atol=1e-5)
    cot = jax.random.normal(kq, q.shape)
    grads = [jax.grad(lambda *a, c=c: jnp.sum(f(c)(*a) * cot), (0, 1, 2))(q, k, v)
             for c in (True, False)]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_standalone_attention_docstring_and_formula():
    assert doctest.testmod(attention_mod).failed == 0
    attn = MultiHeadAttention(num_heads=2, causal=False)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 8))
    params = attn.init(jax.random.PRNGKey(1), x, x, x)["params"]
    p = nn.unbox(params)
    q = jnp.einsum("bld,dhk->blhk", x, p["query"]["kernel"])
    k = jnp.einsum("bld,dhk->blhk", x, p["key"]["kernel"])
    v = jnp.einsum("bld,dhk->blhk", x, p["value"]["kernel"])
    w = jax.nn.softmax(jnp.einsum("bqhk,bshk->bhqs", q, k) / jnp.sqrt(4.0), axis=-1)
    ref = jnp.einsum("bhqs,bshk,hkd->bqd", w, v, p["out"]["kernel"])  # softmax(QK^T/sqrt d)V
    np.testing.assert_allclose(attn.apply({"params": params}, x, x, x), ref, atol=1e-5)


def test_bf16_compute_keeps_f32_params_and_close_logits():
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 97, (2, 12)), jnp.int32)
    model, params, ref = logits_of(tiny(), tokens)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(params)))
    out = Jitted(tiny(dtype="bfloat16")).apply({"params": params}, tokens)
    np.testing.assert_allclose(out, ref, atol=0.05)


def test_flops_per_token_by_hand():
    cfg = ModelConfig(family="gpt2", vocab_size=1000, d_model=64, n_layers=2, n_heads=4,
                      max_seq_len=128)
    # per layer forward, 2 FLOPs per multiply-add: q,k,v,out 2*4*64*64 = 32768;
    # mlp 2*2*64*256 = 65536; attention QK^T and AV 2*2*128*64 = 32768 → 131072.
    # model forward: 2 * 131072 + head 2*64*1000 = 390144; training = 3x
    assert flops_per_token(cfg, 128) == 3 * 390144
    assert flops_per_token(cfg, 128, training=False) == 390144


def test_auto_settings_are_resolved_before_a_model_is_built():
    asked = ModelConfig(d_model=32, n_layers=1, n_heads=4, vocab_size=97, max_seq_len=16)
    assert "auto" in (asked.dtype, asked.attention)
    with pytest.raises(ConfigError, match="resolve_auto"):
        DecoderLM(asked).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    resolved = resolve_auto(asked)
    assert resolved.dtype in ("float32", "bfloat16") and resolved.attention == "xla"  # CPU
    assert resolve_auto(resolved) is resolved  # nothing left to decide
    DecoderLM(resolved).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))


@pytest.mark.parametrize("family", ["gpt2", pytest.param("llama", marks=pytest.mark.slow)])
def test_scaled_residual_init_shrinks_only_the_residual_projections(family):
    """``model.residual_init=scaled``: attention out and MLP down are drawn with
    0.02/sqrt(2 n_layers) (GPT-2/nanoGPT); every other projection keeps 0.02, as does plain."""
    cfg = tiny(family=family, d_model=64, n_layers=4, d_ff=256)
    tokens = jnp.zeros((1, 8), jnp.int32)
    stds = {}
    for mode in ("plain", "scaled"):
        params = Jitted(cfg.model_copy(update={"residual_init": mode})).init(
            jax.random.PRNGKey(0), tokens)["params"]
        flat = jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]
        stds[mode] = {jax.tree_util.keystr(p): float(jnp.std(v)) for p, v in flat
                      if p[-1].key == "kernel"}
    residual = [k for k in stds["plain"] if "'out'" in k or "'proj'" in k]
    assert len(residual) == 2 * cfg.n_layers
    scaled = 0.02 / np.sqrt(2 * cfg.n_layers)
    for key, std in stds["scaled"].items():
        expected = scaled if key in residual else 0.02
        assert std == pytest.approx(expected, rel=0.1), key
        assert stds["plain"][key] == pytest.approx(0.02, rel=0.1), key


def test_flops_count_the_head_on_the_positions_it_runs_on():
    """Masked-LM pretraining runs its head on max_predictions of seq_len positions only."""
    cfg = ModelConfig(family="bert", d_model=64, n_layers=2, n_heads=4, vocab_size=512)
    full, part = flops_per_token(cfg, 128), flops_per_token(cfg, 128, head_positions=40)
    head = 3 * (2 * 64 * 512 + 2 * 64 * 64)
    assert full - part == pytest.approx(head * (1 - 40 / 128))
    assert flops_per_token(cfg, 128, head_positions=128) == full
