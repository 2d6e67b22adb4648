"""Generation speed: prefill and per-token decode time, with the KV cache and without it.

For the tiny preset's model and the default model (random parameters: speed does not
depend on training), batch 1 and 8, a prompt of ``--prompt`` tokens and ``--new`` new
tokens (greedy, no EOS, so every step runs), on one JAX CPU device:

- *prefill*: ``DecodeEngine.prefill`` (a new cache, the prompt's K/V written at once);
- *decode, cache, while_loop*: ``DecodeEngine.decode``, the jitted ``lax.while_loop``;
- *decode, cache, Python loop*: the jitted one-token step called per token, as
  ``jaxlm generate`` does when it streams one prompt;
- *decode, no cache*: a full forward pass over the fixed (B, prompt + new) token buffer for
  every token, then the argmax at the last filled slot (jaxlm's previous sampler).

Each figure is the median of ``--rounds`` rounds after one compiling run. Rewrites the
"Generation" section of BENCHMARKS.md.

    python benchmarks/generate.py [--prompt 64] [--new 64] [--rounds 3] [--batches 1 8]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from report import replace_section  # benchmarks/report.py  # noqa: E402

from jaxlm.config import load_config  # noqa: E402
from jaxlm.generate import GREEDY, DecodeEngine, left_pad, place_params  # noqa: E402
from jaxlm.generate.source import inference_mesh  # noqa: E402
from jaxlm.models import DecoderLM, param_count  # noqa: E402
from jaxlm.runtime.hardware import describe_cpu, resolve_auto  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Generation"
CONFIGS = {"tiny": str(ROOT / "configs" / "pretrain" / "tiny.yaml"), "default": None}


def median_time(fn: Callable[[], object], rounds: int) -> float:
    """Median wall seconds of ``fn`` (which blocks until its result is ready), after a first
    call that compiles."""
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(name: str, batch_size: int, prompt_len: int, n_new: int,
            rounds: int) -> dict[str, float]:
    """Milliseconds: prefill, and per new token for each decode method."""
    cfg = load_config(CONFIGS[name], [f"model.max_seq_len={prompt_len + n_new}",
                                      f"data.seq_len={prompt_len + n_new}"])
    mesh, rules = inference_mesh(cfg)
    model = DecoderLM(cfg.model)
    host = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    params = place_params(cfg.model, host, mesh, rules)
    engine = DecodeEngine(cfg.model, mesh, rules)
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, cfg.model.vocab_size, (batch_size, prompt_len)).tolist()
    batch = left_pad(prompts, engine.row_multiple)

    def prefill():
        logits, cache = engine.prefill(params, batch, n_new)
        return jax.block_until_ready((logits, cache))

    def first_and_cache():
        logits, cache = prefill()
        return engine.sample(logits, 0, 0, GREEDY), cache

    def cached_while_loop():  # the cache is donated by each step: prefill a fresh one
        first, cache = state.pop()
        return engine.decode(params, cache, first, batch, n_new, GREEDY)

    def cached_python_loop():
        token, cache = state.pop()
        for i in range(1, n_new):
            logits, cache = engine.step(params, cache, token, batch.lengths + i - 1)
            token = engine.sample(logits, 0, i, GREEDY)
        return token

    next_token = jax.jit(lambda p, buf, i: jnp.argmax(model.apply({"params": p}, buf)[:, i - 1],
                                                      axis=-1).astype(jnp.int32))

    def no_cache():
        buf = jnp.zeros((batch_size, prompt_len + n_new), jnp.int32)
        buf = buf.at[:, :prompt_len].set(jnp.asarray(prompts, jnp.int32))
        for i in range(prompt_len, prompt_len + n_new - 1):
            buf = buf.at[:, i].set(next_token(params, buf, jnp.int32(i)))
        return jax.block_until_ready(buf)

    def timed_decode(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(rounds + 1):  # the first run compiles; each starts from a new prefill
            state.append(first_and_cache())
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times[1:])

    state: list = []
    ms = 1000.0 / (n_new - 1)  # per decode step (token 0 comes from the prefill)
    out = {"params": param_count(cfg.model) / 1e6, "dtype": resolve_auto(cfg.model).dtype,
           "prefill": 1000.0 * median_time(prefill, rounds)}
    out["while_loop"] = ms * timed_decode(cached_while_loop)
    out["python_loop"] = ms * timed_decode(cached_python_loop)
    out["no_cache"] = ms * median_time(no_cache, rounds)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    p.add_argument("--new", type=int, default=64, help="new tokens (context = prompt + new)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args()

    rows = []
    for name in args.configs:
        for b in args.batches:
            r = measure(name, b, args.prompt, args.new, args.rounds)
            rows.append((name, b, r))
            print(f"{name} batch {b}: {r}", flush=True)

    command = "python benchmarks/generate.py " + " ".join(sys.argv[1:])
    lines = [
        SECTION, "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {describe_cpu()}, {os.cpu_count()} CPU cores, shared with other jobs while "
        f"measured (figures are medians of {args.rounds} rounds; compare rows of one run, not "
        f"runs); jax {jax.__version__}, one CPU device. Random parameters, greedy, a "
        f"{args.prompt}-token prompt and {args.new} new tokens, so the buffer (context) is "
        f"{args.prompt + args.new}. *Prefill*: the prompt's K/V written into a new cache at "
        "once. Decode figures are per new token: with the KV cache inside the jitted "
        "`lax.while_loop` (batch generation), with the cache from a Python loop over the jitted "
        "one-token step (streaming one prompt), and without a cache, a full forward pass over "
        "the whole buffer per token (the sampler jaxlm had before).",
        "",
        "| model | params | compute | batch | prefill ms | decode ms/token, cache, while_loop "
        "| cache, Python loop | no cache | speed-up (no cache / while_loop) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, b, r in rows:
        lines.append(f"| {name} | {r['params']:.2f}M | {r['dtype']} | {b} | {r['prefill']:.1f} "
                     f"| {r['while_loop']:.2f} | {r['python_loop']:.2f} | {r['no_cache']:.2f} "
                     f"| {r['no_cache'] / r['while_loop']:.1f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", SECTION, text)


if __name__ == "__main__":
    main()
