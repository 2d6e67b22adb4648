"""The LM head fused with the loss over sequence chunks equals the plain logits path."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.matmul import contract
from jaxlm.tasks.causal_lm import token_cross_entropy_sums
from jaxlm.tasks.fused_xent import chunk_length, lm_head_cross_entropy

B, L, D, V = 2, 7, 8, 11
TINY = str(Path(__file__).parents[1] / "configs" / "pretrain" / "tiny.yaml")


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


STEP_SCRIPT = """
import sys
import jax, numpy as np
from jaxlm.config import load_config
from jaxlm.train.pretrain import setup
for overrides in [[], ["model.family=llama", "model.n_kv_heads=2"],
                  ["data.seq_len=256", "model.max_seq_len=256", "train.global_batch=64"]]:
    cfg = load_config(sys.argv[1], ["model.dtype=bfloat16", "logging.progress=false",
                                    *sys.argv[2:], *overrides])
    run = setup(cfg)
    b, n = cfg.train.global_batch, cfg.data.seq_len
    toks = np.arange(b * n, dtype=np.int32).reshape(b, n) % cfg.model.vocab_size
    batch = jax.device_put({"inputs": toks, "targets": toks, "positions": np.tile(
        np.arange(n, dtype=np.int32), (b, 1)), "segment_ids": np.ones_like(toks),
        "weights": np.ones((b, n), np.float32)}, run.batch_sharding)
    for _ in range(2):
        run.state, metrics = run.train_step(run.state, batch)
    assert np.isfinite(float(metrics["loss"])), overrides
    print("ok", overrides)
"""


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 8])
def test_bf16_train_steps_compile_and_run(devices):
    """Every bf16 matmul of the step must reach a kernel that takes bf16 — XLA:CPU has none
    for some transposed forms ("Unsupported element type for DotThunk::Execute: BF16 x BF16
    = F32"), which a transpose folded into the loss's one-chunk loop produced. Forced bf16
    (not ``auto``), so every CPU checks it: the tiny model with one loss chunk and a tied
    head, Llama (untied head, GQA), and several loss chunks; on 1 and on 8 devices."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    done = subprocess.run([sys.executable, "-c", STEP_SCRIPT, TINY, f"mesh.data={devices}"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("ok") == 3
