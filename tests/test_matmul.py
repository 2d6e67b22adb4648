"""``jaxlm.models.matmul.contract``: JAX's gradients in f32, bf16 matmuls in a bf16 backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.matmul import contract

CASES = [  # (x shape, w shape, n, k_last)
    ((2, 5, 8), (8, 6), 1, False),  # dense
    ((2, 5, 3, 4), (3, 4, 8), 2, False),  # attention out: (H, Dh) -> D
    ((2, 5, 8), (6, 8), 1, True),  # tied decoder: (V, D) table
]


def reference(x, w, n, k_last):
    wc = jnp.moveaxis(w, tuple(range(w.ndim - n, w.ndim)), tuple(range(n))) if k_last else w
    dims = ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))), ((), ()))
    return jax.lax.dot_general(x, wc, dims, preferred_element_type=jnp.float32)


def operands(xs, ws):
    kx, kw = jax.random.split(jax.random.key(0))
    return jax.random.normal(kx, xs), jax.random.normal(kw, ws)


def loss(f, *args):
    return lambda x, w: jnp.sum(jnp.sin(f(x, w, *args)))


@pytest.mark.parametrize(("xs", "ws", "n", "k_last"), CASES)
def test_f32_values_and_gradients_are_jaxs(xs, ws, n, k_last):
    x, w = operands(xs, ws)
    mine = jax.grad(loss(lambda a, b, *r: contract(a, b, *r), n, "float32", k_last), (0, 1))
    ref = jax.grad(loss(reference, n, k_last), (0, 1))
    np.testing.assert_allclose(contract(x, w, n, "float32", k_last), reference(x, w, n, k_last),
                               rtol=1e-6, atol=1e-6)
    for got, want in zip(mine(x, w), ref(x, w), strict=True):
        # f32 sums in another order (the CPU model picks XLA's kernel): a few ulps of the largest
        # entry, not of each one; a wrong transpose or scale would be off by O(1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize(("xs", "ws", "n", "k_last"), CASES)
def test_bf16_gradients_are_close_keep_operand_dtypes_and_use_bf16_matmuls(xs, ws, n, k_last):
    x, w = operands(xs, ws)
    g = jax.grad(loss(contract, n, "bfloat16", k_last), (0, 1))
    ref = jax.grad(loss(reference, n, k_last), (0, 1))
    got, want = g(x, w), ref(x, w)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == jnp.float32  # f32 master weights get f32 gradients
        np.testing.assert_allclose(a, b, rtol=0.1, atol=0.1 * float(jnp.abs(b).max()))
    # every matmul of forward and backward takes bf16 operands and accumulates in f32
    dots = list(dot_generals(jax.make_jaxpr(g)(x, w).jaxpr))
    assert len(dots) == 3
    for eqn in dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
        assert eqn.params["preferred_element_type"] == jnp.float32, eqn


def dot_generals(jaxpr):
    """Every dot_general equation of a jaxpr, nested ones included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else [p]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from dot_generals(inner)
