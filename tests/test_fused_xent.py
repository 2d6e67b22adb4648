"""The LM head fused with the loss over sequence chunks equals the plain logits path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.matmul import contract
from jaxlm.tasks.causal_lm import token_cross_entropy_sums
from jaxlm.tasks.fused_xent import chunk_length, lm_head_cross_entropy

B, L, D, V = 2, 7, 8, 11


def inputs(tied: bool):
    k = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k[0], (B, L, D))
    w = jax.random.normal(k[1], (V, D) if tied else (D, V))
    targets = jax.random.randint(k[2], (B, L), 0, V)
    weights = jnp.ones((B, L)).at[1, 4:].set(0.0)  # some padding
    return h, w, targets, weights


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk", [1, 3, 7])  # 3: L is not a multiple, the last chunk pads
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_fused_equals_plain_values_sums_and_gradients(tied, chunk, z_loss):
    h, w, targets, weights = inputs(tied)

    def plain(h, w):
        logits = contract(h, w, 1, "float32", k_last=tied)
        return token_cross_entropy_sums(logits, targets, weights, z_loss)

    def fused(h, w):
        return lm_head_cross_entropy(h, w, targets, weights, z_loss, "float32", tied, chunk)

    (want, want_sums), want_grads = jax.value_and_grad(plain, (0, 1), has_aux=True)(h, w)
    (got, got_sums), got_grads = jax.jit(jax.value_and_grad(fused, (0, 1), has_aux=True))(h, w)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for key in want_sums:
        np.testing.assert_allclose(got_sums[key], want_sums[key], rtol=1e-5, err_msg=key)
    for g, e in zip(got_grads, want_grads, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
    # without differentiation the primal path gives the same numbers
    np.testing.assert_allclose(fused(h, w)[0], want, rtol=1e-5)


def test_gradient_scales_with_the_cotangent():
    h, w, targets, weights = inputs(True)
    f = lambda s: lambda h, w: s * lm_head_cross_entropy(  # noqa: E731
        h, w, targets, weights, 0.0, "float32", True, 3)[0]
    g1, g3 = (jax.grad(f(s), (0, 1))(h, w) for s in (1.0, 3.0))
    for a, b in zip(g1, g3, strict=True):
        np.testing.assert_allclose(3 * a, b, rtol=1e-5)


def test_chunk_length_bounds_the_chunk():
    assert chunk_length(16, 256, 8192, 1 << 22) == 32  # 16 x 32 x 8192 = 4Mi logits
    # the default budget is per device: the global batch spreads over all of them
    assert chunk_length(16, 256, 8192) == min(256, 32 * jax.device_count())
    assert chunk_length(1, 10, 8, elements=1000) == 10  # never longer than the sequence
    assert chunk_length(64, 2048, 50257, 1 << 22) == 1  # never empty
