"""Training throughput: jaxlm against the strongest PyTorch baseline, in one process.

For each config — ``issue`` (GPT-2 style, d_model 256, 4 layers, 4 heads, seq 256, batch 16,
vocab 8192: 5.3M params) and the ``small`` preset (21M) — this times jaxlm's real jitted train
step *with the defaults a user gets* against the same model in PyTorch: eager with
``scaled_dot_product_attention``, and ``torch.compile``; in f32, and with bf16 autocast
only where the CPU has native bf16 (AVX512-BF16 / AMX). All runners alternate rounds so each
sees the same machine state; the median step is reported. Random tokens; AdamW; clipping.

It prints and writes to BENCHMARKS.md (one section per JAX version) the CPU model, the
versions, tokens/s, MFU against the measured matmul plateau, and each jaxlm/PyTorch ratio.

    python benchmarks/train_throughput.py [--configs issue small] [--rounds 5] [--steps 3]
        [--jax-override model.attention=dot_product ...]

Needs the ``bench`` extra (``pip install -e '.[bench]'``: torch).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import flax
import jax
import numpy as np
from report import replace_section  # benchmarks/report.py

from jaxlm.config import load_config
from jaxlm.data.mlm import head_positions
from jaxlm.models import flops_per_token, param_count
from jaxlm.profiling import measure_cpu_peak_flops
from jaxlm.runtime.hardware import cpu_has_native_bf16, describe_cpu, resolve_auto
from jaxlm.runtime.hostmem import retain_freed_memory
from jaxlm.train.pretrain import setup

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "issue": ["model.family=gpt2", "model.d_model=256", "model.n_layers=4", "model.n_heads=4",
              "model.vocab_size=8192", "model.max_seq_len=256", "data.seq_len=256",
              "train.global_batch=16"],
    "small": ["model.family=gpt2", "model.d_model=512", "model.n_layers=6", "model.n_heads=8",
              "model.vocab_size=4096", "model.max_seq_len=256", "data.seq_len=256",
              "train.global_batch=16"],
}


def random_batch(b: int, seq: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    toks = np.random.default_rng(seed).integers(0, vocab, (b, seq + 1)).astype(np.int32)
    return {"inputs": toks[:, :-1], "targets": toks[:, 1:],
            "segment_ids": np.ones((b, seq), np.int32),
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (b, seq)).copy(),
            "weights": np.ones((b, seq), np.float32)}


class JaxRunner:
    name = "jaxlm"

    def __init__(self, cfg):
        self.run = setup(cfg)
        self.batch = jax.device_put(random_batch(cfg.train.global_batch, cfg.data.seq_len,
                                                 cfg.model.vocab_size, 0),
                                    self.run.batch_sharding)
        self.step(2)  # compile + warm up

    def step(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.run.state, m = self.run.train_step(self.run.state, self.batch)
        jax.block_until_ready(m["loss"])
        return (time.perf_counter() - t0) / n


class TorchRunner:
    """The same GPT-2 model (learned positions, pre-LN, tanh-GELU, tied head), written as a
    PyTorch user would: nn.Linear, F.scaled_dot_product_attention(is_causal=True)."""

    def __init__(self, cfg, compiled: bool, bf16: bool):
        import torch
        from torch import nn
        from torch.nn import functional as F  # noqa: N812

        self.name = f"PyTorch {'compile' if compiled else 'eager'} {'bf16' if bf16 else 'f32'}"
        self.torch, self.bf16 = torch, bf16
        m = cfg.model
        torch.manual_seed(0)

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.ln1, self.ln2 = nn.LayerNorm(m.d_model), nn.LayerNorm(m.d_model)
                self.qkv = nn.Linear(m.d_model, 3 * m.d_model)
                self.out = nn.Linear(m.d_model, m.d_model)
                self.fc, self.proj = nn.Linear(m.d_model, m.d_ff), nn.Linear(m.d_ff, m.d_model)

            def forward(self, x):
                b, t, d = x.shape
                q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
                q, k, v = (z.view(b, t, m.n_heads, d // m.n_heads).transpose(1, 2)
                           for z in (q, k, v))
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                x = x + self.out(y.transpose(1, 2).reshape(b, t, d))
                return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

        class GPT(nn.Module):
            def __init__(self):
                super().__init__()
                self.wte = nn.Embedding(m.vocab_size, m.d_model)
                self.wpe = nn.Embedding(m.max_seq_len, m.d_model)
                self.blocks = nn.ModuleList(Block() for _ in range(m.n_layers))
                self.ln = nn.LayerNorm(m.d_model)

            def forward(self, idx):
                x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
                for blk in self.blocks:
                    x = blk(x)
                return self.ln(x) @ self.wte.weight.T

        model = GPT()
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        self.model = model

        def train_step(x, y):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            loss.backward()
            return loss

        self.train_step = torch.compile(train_step) if compiled else train_step
        b = random_batch(cfg.train.global_batch, cfg.data.seq_len, m.vocab_size, 0)
        self.x, self.y = (torch.from_numpy(b[k]).long() for k in ("inputs", "targets"))
        self.step(3)  # compile + warm up

    def step(self, n: int) -> float:
        torch = self.torch
        t0 = time.perf_counter()
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            self.train_step(self.x, self.y)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        return (time.perf_counter() - t0) / n


def bench(name: str, rounds: int, steps: int, peak: float, native_bf16: bool,
          jax_overrides: list[str]) -> dict:
    cfg = load_config(None, [*CONFIGS[name], "mesh.data=1", "train.steps=1000",
                             "train.warmup_steps=10", "logging.progress=false",
                             *jax_overrides])
    tokens = cfg.train.global_batch * cfg.data.seq_len
    flops = flops_per_token(cfg.model, cfg.data.seq_len, head_positions=head_positions(cfg.data))
    flops *= tokens
    runners = [JaxRunner(cfg)]
    for compiled in (False, True):
        for bf16 in (False, True) if native_bf16 else (False,):
            runners.append(TorchRunner(cfg, compiled, bf16))
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for _ in range(rounds):  # alternate so all see the same machine
        for r in runners:
            times[r.name].append(r.step(steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    j = med["jaxlm"]
    row = {"config": name, "params": param_count(cfg.model),
           "batch": f"{cfg.train.global_batch}x{cfg.data.seq_len}",
           "jax_dtype": resolve_auto(cfg.model).dtype,
           "tok_s": {k: tokens / v for k, v in med.items()},
           "mfu": flops / j / peak, "ratio": {k: v / j for k, v in med.items() if k != "jaxlm"}}
    print(f"{name}: {row['params'] / 1e6:.2f}M params, batch {row['batch']}: " + ", ".join(
        f"{k} {tokens / v:,.0f} tok/s" for k, v in med.items()) + "; jaxlm / " + ", ".join(
        f"{k} = {v:.2f}x" for k, v in row["ratio"].items()) + f"; jaxlm MFU {row['mfu']:.1%}",
        flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["issue", "small"], choices=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--jax-override", nargs="*", default=[],
                   help="jaxlm config overrides to try a lever (the table says which)")
    args = p.parse_args()
    retained = retain_freed_memory()  # as the `jaxlm` command does, before any thread starts
    import torch

    cpu, native_bf16 = describe_cpu(), cpu_has_native_bf16()
    peak = measure_cpu_peak_flops()
    print(f"{cpu}; {os.cpu_count()} cores; jax {jax.__version__}, flax {flax.__version__}, "
          f"torch {torch.__version__}; measured matmul plateau {peak / 1e12:.3f} TFLOP/s; "
          f"freed memory {'kept for reuse' if retained else 'returned to the OS'}",
          flush=True)
    rows = [bench(n, args.rounds, args.steps, peak, native_bf16, args.jax_override)
            for n in args.configs]
    names = [k for k in rows[0]["tok_s"] if k != "jaxlm"]
    heading = f"## Training throughput, jax {jax.__version__}"
    lines = [heading, "",
             f"Command: `python benchmarks/train_throughput.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {cpu}, {os.cpu_count()} cores, one process, one JAX CPU device; Python "
             f"{platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
             f"torch {torch.__version__}. Matmul plateau measured here: {peak / 1e12:.3f} "
             "TFLOP/s. Median step of alternating rounds; random tokens; AdamW + clipping. "
             "jaxlm runs with its defaults"
             + (f" plus `{' '.join(args.jax_override)}`" if args.jax_override else "")
             + ". PyTorch: the same model with `scaled_dot_product_attention`"
             + (", bf16 autocast rows because this CPU has native bf16." if native_bf16 else
                "; no bf16 rows: this CPU has no native bf16.")
             + (" The process keeps freed memory for reuse, as the `jaxlm` command does"
                " (`jaxlm/runtime/hostmem.py`); PyTorch runs in the same process." if retained else
                " Freed memory goes back to the OS (`jaxlm/runtime/hostmem.py` not applied)."), "",
             "| config | params | batch | jaxlm dtype | jaxlm tok/s | MFU | "
             + " | ".join(f"{n} tok/s" for n in names) + " | "
             + " | ".join(f"jaxlm / {n}" for n in names) + " |",
             "|---|---:|---|---|---:|---:|" + "---:|" * (2 * len(names))]
    for r in rows:
        lines.append(f"| {r['config']} | {r['params'] / 1e6:.2f}M | {r['batch']} | "
                     f"{r['jax_dtype']} | {r['tok_s']['jaxlm']:,.0f} | {r['mfu']:.1%} | "
                     + " | ".join(f"{r['tok_s'][n]:,.0f}" for n in names) + " | "
                     + " | ".join(f"{r['ratio'][n]:.2f}x" for n in names) + " |")
    replace_section(ROOT / "BENCHMARKS.md", heading, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
