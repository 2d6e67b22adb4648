"""Training throughput: jaxlm vs the same model in plain PyTorch, in one process.

For each config (tiny and the ~20M 'small' preset by default) this times jaxlm's real
jitted train step and a PyTorch eager + bf16-autocast implementation of the same GPT-2 model
(written here, for the benchmark only), alternating rounds so both see the same machine
state. It prints tokens/s, step time, TFLOP/s and MFU (FLOPs from
``jaxlm.models.flops_per_token``; the CPU peak measured in this run by a large bf16→f32
matmul) and rewrites the "Training throughput" section of BENCHMARKS.md.

    python benchmarks/train_throughput.py [--configs tiny small] [--rounds 3] [--steps 5]

Needs the ``bench`` extra (``pip install -e '.[bench]'`` → torch 2.13 CPU).
"""

from __future__ import annotations

import argparse
import math
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
from jaxlm.models import flops_per_token, param_count
from jaxlm.profiling import measure_cpu_peak_flops
from jaxlm.train.loop import setup

ROOT = Path(__file__).resolve().parents[1]


def cpu_description() -> str:
    """The CPU model and the flags that decide its matmul speed (from /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                  if ln.startswith("model name")), platform.machine())
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                      if ln.startswith("flags")), []))
    has = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} ({', '.join(has) or 'no AVX2'})"


def torch_version() -> str:
    import torch

    return torch.__version__


def random_batch(b: int, seq: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    toks = np.random.default_rng(seed).integers(0, vocab, (b, seq + 1)).astype(np.int32)
    return {
        "inputs": toks[:, :-1],
        "targets": toks[:, 1:],
        "segment_ids": np.ones((b, seq), np.int32),
        "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (b, seq)).copy(),
        "weights": np.ones((b, seq), np.float32),
    }


class JaxRunner:
    def __init__(self, cfg):
        self.run = setup(cfg)
        self.batch = jax.device_put(
            random_batch(cfg.train.global_batch, cfg.data.seq_len, cfg.model.vocab_size, 0),
            self.run.batch_sharding,
        )
        self.step(2)  # compile + warm up

    def step(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.run.state, m = self.run.train_step(self.run.state, self.batch)
        jax.block_until_ready(m["loss"])
        return (time.perf_counter() - t0) / n


class TorchRunner:
    """The same GPT-2 model (learned positions, LayerNorm, GELU, tied head) in eager PyTorch."""

    def __init__(self, cfg, autocast: bool = True):
        import torch
        from torch import nn

        self.autocast = autocast
        m = cfg.model
        torch.manual_seed(0)

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.ln1, self.ln2 = nn.LayerNorm(m.d_model), nn.LayerNorm(m.d_model)
                self.qkv, self.out = (
                    nn.Linear(m.d_model, 3 * m.d_model),
                    nn.Linear(m.d_model, m.d_model),
                )
                self.fc, self.proj = nn.Linear(m.d_model, m.d_ff), nn.Linear(m.d_ff, m.d_model)

            def forward(self, x):
                b, t, d = x.shape
                q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
                q, k, v = (
                    z.view(b, t, m.n_heads, d // m.n_heads).transpose(1, 2) for z in (q, k, v)
                )
                att = (q @ k.transpose(-2, -1)) / math.sqrt(d // m.n_heads)
                att = att.masked_fill(self.mask[:t, :t] == 0, float("-inf")).softmax(-1)
                x = x + self.out((att @ v).transpose(1, 2).reshape(b, t, d))
                return x + self.proj(nn.functional.gelu(self.fc(self.ln2(x)), approximate="tanh"))

        class GPT(nn.Module):
            def __init__(self):
                super().__init__()
                self.wte, self.wpe = (
                    nn.Embedding(m.vocab_size, m.d_model),
                    nn.Embedding(m.max_seq_len, m.d_model),
                )
                self.blocks = nn.ModuleList(Block() for _ in range(m.n_layers))
                mask = torch.tril(torch.ones(m.max_seq_len, m.max_seq_len))
                for blk in self.blocks:
                    blk.register_buffer("mask", mask, persistent=False)
                self.ln = nn.LayerNorm(m.d_model)

            def forward(self, idx):
                x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
                for blk in self.blocks:
                    x = blk(x)
                return self.ln(x) @ self.wte.weight.T

        self.torch = torch
        self.model = GPT()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1)
        b = random_batch(cfg.train.global_batch, cfg.data.seq_len, m.vocab_size, 0)
        self.x = torch.from_numpy(b["inputs"]).long()
        self.y = torch.from_numpy(b["targets"]).long()
        self.step(2)

    def step(self, n: int) -> float:
        torch = self.torch
        t0 = time.perf_counter()
        for _ in range(n):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.model(self.x)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), self.y.flatten())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        return (time.perf_counter() - t0) / n


def bench(name: str, overrides: list[str], rounds: int, steps: int, peak: float) -> dict:
    cfg = load_config(ROOT / "configs" / "pretrain" / f"{name}.yaml", overrides)
    tokens = cfg.train.global_batch * cfg.data.seq_len
    flops = flops_per_token(cfg.model, cfg.data.seq_len) * tokens
    jx, pt, pf = JaxRunner(cfg), TorchRunner(cfg), TorchRunner(cfg, autocast=False)
    jt, tt, ft = [], [], []
    for _ in range(rounds):  # alternate so all see the same machine
        jt.append(jx.step(steps))
        tt.append(pt.step(steps))
        ft.append(pf.step(steps))
    j, t, f = statistics.median(jt), statistics.median(tt), statistics.median(ft)
    row = {
        "config": name,
        "params": param_count(cfg.model),
        "batch": f"{cfg.train.global_batch}x{cfg.data.seq_len}",
        "jax_step": j,
        "jax_tok_s": tokens / j,
        "jax_tflops": flops / j / 1e12,
        "jax_mfu": flops / j / peak,
        "torch_step": t,
        "torch_tok_s": tokens / t,
        "ratio": t / j,
        "torch32_tok_s": tokens / f,
        "ratio32": f / j,
    }
    print(
        f"{name}: {row['params'] / 1e6:.2f}M params, batch {row['batch']}: "
        f"jaxlm {row['jax_tok_s']:,.0f} tok/s ({j * 1e3:.0f} ms/step, {row['jax_tflops']:.3f} "
        f"TFLOP/s, MFU {row['jax_mfu']:.1%}); PyTorch bf16 eager {row['torch_tok_s']:,.0f} tok/s "
        f"({t * 1e3:.0f} ms/step), f32 eager {row['torch32_tok_s']:,.0f} tok/s; jaxlm/PyTorch = "
        f"{row['ratio']:.2f}x (bf16), {row['ratio32']:.2f}x (f32)",
        flush=True,
    )
    return row


def write_markdown(rows: list[dict], peak: float, cmd: str) -> None:
    heading = f"## Training throughput, jax {jax.__version__}"
    lines = [
        heading,
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {cpu_description()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
        f"torch {torch_version()} on {jax.devices()[0].platform.upper()} (1 device). "
        f"CPU peak measured in the same run (best of bf16×bf16→f32 and f32 matmuls): "
        f"{peak / 1e12:.3f} TFLOP/s. jaxlm computes in the dtype `model.dtype: auto` picks.",
        "PyTorch: the same GPT-2 model written in the benchmark, eager, AdamW, with bf16 "
        "autocast (as the issue asks) and in plain f32. All run alternately in one process.",
        "",
        "| config | params | batch | jaxlm tok/s | jaxlm ms/step | TFLOP/s | MFU | PyTorch bf16 "
        "tok/s | PyTorch f32 tok/s | jaxlm/PyTorch bf16 | jaxlm/PyTorch f32 |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['jax_tok_s']:,.0f} | "
            f"{r['jax_step'] * 1e3:.0f} | {r['jax_tflops']:.3f} | {r['jax_mfu']:.1%} | "
            f"{r['torch_tok_s']:,.0f} | {r['torch32_tok_s']:,.0f} | {r['ratio']:.2f}x | "
            f"{r['ratio32']:.2f}x |"
        )
    replace_section(ROOT / "BENCHMARKS.md", heading, "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "small"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--small-batch", type=int, default=8, help="global batch for 'small'")
    args = p.parse_args()
    peak = measure_cpu_peak_flops()
    print(f"measured CPU peak (best of bf16→f32 and f32 matmuls): {peak / 1e12:.3f} TFLOP/s")
    rows = []
    for name in args.configs:
        ov = ["mesh.data=1", "train.steps=1000", "train.warmup_steps=10"]
        if name == "small":
            ov.append(f"train.global_batch={args.small_batch}")
        rows.append(bench(name, ov, args.rounds, args.steps, peak))
    write_markdown(rows, peak, "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
