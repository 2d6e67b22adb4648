"""Training throughput: jaxlm against the strongest PyTorch baseline, each in its own process.

For each config — ``issue`` (GPT-2 style, d_model 256, 4 layers, 4 heads, seq 256, batch 16,
vocab 8192: 5.3M params) and the ``small`` preset (21M) — this times jaxlm's real jitted train
step *with the defaults a user gets* against the same model in PyTorch: eager with
``scaled_dot_product_attention``, and ``torch.compile``; in f32, and with bf16 autocast
only where the CPU has native bf16 (AVX512-BF16 / AMX). Random tokens; AdamW; clipping.

Each framework runs in a process of its own, as its users run it: this script re-invoked with
``--child RUNNER`` builds one runner, compiles and warms it up, times ``--steps`` steady
steps and prints one JSON line. jaxlm's process first sets host memory up as the
``jaxlm train`` process does (``jaxlm/runtime/hostmem.py``); PyTorch's keeps glibc's default
allocator (the parent sets no allocator setting: only XLA_FLAGS' one JAX device, which PyTorch
ignores; ``benchmarks/report.py``). The parent starts one process
per runner per round, the runners alternating round by round so each sees the same machine
state, and reports each runner's median step; start-up (build + compile + warm-up steps) is
reported apart.

It prints, and writes to BENCHMARKS.md (``--out-md``), a section per CPU kind and JAX version
("Training throughput: CPU (its matmul flags), jax X", so a run on another CPU adds its own):
the CPU model and the flags that matter (AVX2, AVX-512, AVX512-BF16, AMX), the versions,
tokens/s, MFU against the measured matmul plateau, and each jaxlm/PyTorch ratio.

    python benchmarks/train_throughput.py [--configs issue small] [--rounds 5] [--steps 3]
        [--torch eager-f32 compile-f32 ...] [--jax-override model.attention=dot_product ...]
        [--out-md BENCHMARKS.md]
    python benchmarks/train_throughput.py --quick  # a tiny config, 1 round of 1 step: a smoke test

Needs the ``bench`` extra (``pip install -e '.[bench]'``: torch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from report import BENCHMARKS_MD, replace_section, run_json  # benchmarks/report.py

from jaxlm.config import Config, load_config

# Nothing here imports jax at module level: a PyTorch child never loads it, and jaxlm's sets
# host memory up before JAX starts (as the `jaxlm` command does).
CONFIGS = {
    "issue": ["model.family=gpt2", "model.d_model=256", "model.n_layers=4", "model.n_heads=4",
              "model.vocab_size=8192", "model.max_seq_len=256", "data.seq_len=256",
              "train.global_batch=16"],
    "small": ["model.family=gpt2", "model.d_model=512", "model.n_layers=6", "model.n_heads=8",
              "model.vocab_size=4096", "model.max_seq_len=256", "data.seq_len=256",
              "train.global_batch=16"],
    "tiny": ["model.family=gpt2", "model.d_model=64", "model.n_layers=2", "model.n_heads=2",
             "model.vocab_size=4096", "model.max_seq_len=64", "data.seq_len=64",
             "train.global_batch=4"],  # --quick: the default tokenizer's 4096 ids
}
RUNNERS = ("jaxlm", "eager-f32", "eager-bf16", "compile-f32", "compile-bf16")
EXTRA_FLAGS = ("amx_tile",)  # AMX's tile registers: recorded beside hardware.MATMUL_FLAGS


def bench_config(name: str, overrides: list[str]) -> Config:
    """The config ``name`` as every runner of this benchmark builds it."""
    return load_config(None, [*CONFIGS[name], "mesh.data=1", "train.steps=1000",
                              "train.warmup_steps=10", "logging.progress=false", *overrides])


def random_batch(b: int, seq: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    toks = np.random.default_rng(seed).integers(0, vocab, (b, seq + 1)).astype(np.int32)
    return {"inputs": toks[:, :-1], "targets": toks[:, 1:],
            "segment_ids": np.ones((b, seq), np.int32),
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (b, seq)).copy(),
            "weights": np.ones((b, seq), np.float32)}


class JaxRunner:
    """jaxlm's real jitted train step (``jaxlm.train.pretrain.setup``), with the defaults a
    user gets (``model.dtype`` and ``attention`` resolved for this machine)."""

    name = "jaxlm"

    def __init__(self, cfg: Config):
        import flax
        import jax

        from jaxlm.train.pretrain import setup

        self.jax = jax
        self.versions = {"jax": jax.__version__, "flax": flax.__version__}
        self.run = setup(cfg)
        self.dtype = self.run.cfg.model.dtype  # model.dtype=auto resolved for this CPU
        self.batch = jax.device_put(random_batch(cfg.train.global_batch, cfg.data.seq_len,
                                                 cfg.model.vocab_size, 0),
                                    self.run.batch_sharding)
        self.step(2)  # compile + warm up

    def step(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.run.state, m = self.run.train_step(self.run.state, self.batch)
        self.jax.block_until_ready(m["loss"])
        return (time.perf_counter() - t0) / n


class TorchRunner:
    """The same GPT-2 model (learned positions, pre-LN, tanh-GELU, tied head), written as a
    PyTorch user would: nn.Linear, F.scaled_dot_product_attention(is_causal=True)."""

    def __init__(self, cfg: Config, compiled: bool, bf16: bool):
        import torch
        from torch import nn
        from torch.nn import functional as F  # noqa: N812

        self.name = f"PyTorch {'compile' if compiled else 'eager'} {'bf16' if bf16 else 'f32'}"
        self.torch, self.bf16 = torch, bf16
        self.versions = {"torch": torch.__version__}
        self.dtype = "bf16 autocast" if bf16 else "float32"
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


def child(runner: str, name: str, steps: int, overrides: list[str]) -> dict:
    """One round of ``runner`` on config ``name``, in this process: build it, compile and warm
    it up (``startup_s``), then time ``steps`` steady steps (``step_s``, per step).

    jaxlm's process sets host memory up first, as the ``jaxlm train`` process does; PyTorch's
    is left as a PyTorch user has it (glibc's default allocator)."""
    if runner == "jaxlm":
        from jaxlm.runtime import hostmem

        memory = hostmem.apply("train")  # before JAX starts its threads
    else:
        tunables = os.environ.get("GLIBC_TUNABLES")
        memory = "glibc's default" + (f" (GLIBC_TUNABLES={tunables})" if tunables else "")
    cfg = bench_config(name, overrides)
    t0 = time.perf_counter()
    r = (JaxRunner(cfg) if runner == "jaxlm" else
         TorchRunner(cfg, compiled=runner.startswith("compile"), bf16=runner.endswith("bf16")))
    startup = time.perf_counter() - t0
    return {"runner": r.name, "step_s": r.step(steps), "startup_s": startup, "dtype": r.dtype,
            "host_memory": memory, "versions": r.versions}


def bench(name: str, runners: list[str], rounds: int, steps: int, peak: float | None,
          jax_overrides: list[str]) -> dict:
    """Time ``runners`` on config ``name``: a process per runner per round, alternating; the
    median step of each, its tokens/s, jaxlm's MFU (``peak`` None: not measured) and ratios."""
    from jaxlm.data.mlm import head_positions
    from jaxlm.models import flops_per_token, param_count

    cfg = bench_config(name, jax_overrides)
    tokens = cfg.train.global_batch * cfg.data.seq_len
    flops = flops_per_token(cfg.model, cfg.data.seq_len, head_positions=head_positions(cfg.data))
    flops *= tokens
    script = str(Path(__file__).resolve())
    results: dict[str, list[dict]] = {r: [] for r in runners}
    for _ in range(rounds):  # alternate so all see the same machine
        for r in runners:
            out, _, _ = run_json([sys.executable, script, "--child", r, "--configs", name,
                                  "--steps", str(steps), "--jax-override", *jax_overrides],
                                 f"the {r} process on {name}")
            results[r].append(out)
    first = {v[0]["runner"]: v[0] for v in results.values()}
    med = {v[0]["runner"]: statistics.median(o["step_s"] for o in v) for v in results.values()}
    startup = {v[0]["runner"]: statistics.median(o["startup_s"] for o in v)
               for v in results.values()}
    j = med["jaxlm"]
    row = {"config": name, "params": param_count(cfg.model),
           "batch": f"{cfg.train.global_batch}x{cfg.data.seq_len}",
           "jax_dtype": first["jaxlm"]["dtype"], "children": first, "startup_s": startup,
           "tok_s": {k: tokens / v for k, v in med.items()},
           "mfu": None if peak is None else flops / j / peak,
           "ratio": {k: v / j for k, v in med.items() if k != "jaxlm"}}
    print(f"{name}: {row['params'] / 1e6:.2f}M params, batch {row['batch']}: " + ", ".join(
        f"{k} {tokens / v:,.0f} tok/s ({startup[k]:.1f} s start-up)" for k, v in med.items())
        + "; jaxlm / " + ", ".join(f"{k} = {v:.2f}x" for k, v in row["ratio"].items())
        + ("" if peak is None else f"; jaxlm MFU {row['mfu']:.1%}"), flush=True)
    return row


def section(rows: list[dict], args: argparse.Namespace, peak: float | None,
            native_bf16: bool) -> tuple[str, str]:
    """The BENCHMARKS.md section of this run: (its heading, its text)."""
    from jaxlm.runtime.hardware import MATMUL_FLAGS, cpu_flags, cpu_model, describe_cpu

    children = {k: v for r in rows for k, v in r["children"].items()}
    versions = {k: v for c in children.values() for k, v in c["versions"].items()}
    torch_memory = {c["host_memory"] for k, c in children.items() if k != "jaxlm"}
    names = [k for k in rows[0]["tok_s"] if k != "jaxlm"]
    flags = ", ".join(f"{f} {'yes' if f in cpu_flags() else 'no'}"
                      for f in (*MATMUL_FLAGS, *EXTRA_FLAGS))
    heading = f"## Training throughput: {describe_cpu()}, jax {versions['jax']}"
    lines = [heading, "",
             f"Command: `python benchmarks/train_throughput.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores; CPU flags: {flags}. Python "
             f"{platform.python_version()}, " + ", ".join(f"{k} {v}" for k, v in
                                                         versions.items()) + ". "
             + ("Matmul plateau not measured (`--quick`)." if peak is None else
                f"Matmul plateau measured here: {peak / 1e12:.3f} TFLOP/s.") + "  ",
             f"Each framework in its own process, as its users run it: a process per runner "
             f"per round, the runners alternating round by round (rounds: {args.rounds}); "
             "each builds its runner, compiles and warms it up, then times steady steps "
             f"({args.steps} per process); the tables give the median over rounds. jaxlm's "
             "process sets host memory up as "
             f"`jaxlm train` does (`jaxlm/runtime/hostmem.py`: "
             f"`{children['jaxlm']['host_memory']}`), on one JAX CPU device; PyTorch's use "
             + (", ".join(sorted(torch_memory)) or "-") + " allocator. Random tokens; AdamW "
             "+ clipping. jaxlm runs with its defaults"
             + (f" plus `{' '.join(args.jax_override)}`" if args.jax_override else "")
             + ". PyTorch: the same model with `scaled_dot_product_attention`"
             + (", bf16 autocast rows where asked: this CPU has native bf16." if native_bf16
                else "; no bf16 rows: this CPU has no native bf16."), "",
             "| config | params | batch | jaxlm dtype | jaxlm tok/s | MFU | "
             + " | ".join(f"{n} tok/s" for n in names) + " | "
             + " | ".join(f"jaxlm / {n}" for n in names) + " |",
             "|---|---:|---|---|---:|---:|" + "---:|" * (2 * len(names))]
    for r in rows:
        lines.append(f"| {r['config']} | {r['params'] / 1e6:.2f}M | {r['batch']} | "
                     f"{r['jax_dtype']} | {r['tok_s']['jaxlm']:,.0f} | "
                     + ("-" if r["mfu"] is None else f"{r['mfu']:.1%}") + " | "
                     + " | ".join(f"{r['tok_s'][n]:,.0f}" for n in names) + " | "
                     + " | ".join(f"{r['ratio'][n]:.2f}x" for n in names) + " |")
    lines += ["", "Start-up of each process (build, compile, warm-up steps), median seconds:", "",
              "| config | jaxlm | " + " | ".join(names) + " |",
              "|---|---:|" + "---:|" * len(names)]
    for r in rows:
        lines.append(f"| {r['config']} | " + " | ".join(f"{r['startup_s'][n]:.1f}"
                                                       for n in ["jaxlm", *names]) + " |")
    return heading, "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["issue", "small"], choices=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps timed per process")
    p.add_argument("--torch", nargs="*", default=list(RUNNERS[1:]), choices=RUNNERS[1:],
                   help="the PyTorch runners beside jaxlm (bf16 ones only where the CPU has "
                   "native bf16)")
    p.add_argument("--jax-override", nargs="*", default=[],
                   help="jaxlm config overrides to try a lever (the table says which)")
    p.add_argument("--quick", action="store_true",
                   help="the tiny config, 1 round of 1 step, no matmul plateau: a smoke test")
    p.add_argument("--out-md", type=Path, default=BENCHMARKS_MD,
                   help="the markdown file whose section this run replaces")
    p.add_argument("--child", choices=RUNNERS, help=argparse.SUPPRESS)  # one runner, one round
    args = p.parse_args()
    if args.child:
        result = child(args.child, args.configs[0], args.steps, args.jax_override)
        print(json.dumps(result), flush=True)
        return
    if args.quick:
        args.configs, args.rounds, args.steps = ["tiny"], 1, 1
    from jaxlm.profiling import measure_cpu_peak_flops
    from jaxlm.runtime.hardware import cpu_has_native_bf16, describe_cpu

    native_bf16 = cpu_has_native_bf16()
    runners = ["jaxlm", *(r for r in args.torch if native_bf16 or not r.endswith("bf16"))]
    peak = None if args.quick else measure_cpu_peak_flops()
    print(f"{describe_cpu()}; {os.cpu_count()} cores; "
          + ("" if peak is None else f"measured matmul plateau {peak / 1e12:.3f} TFLOP/s; ")
          + f"a process per runner per round: {', '.join(runners)}", flush=True)
    rows = [bench(n, runners, args.rounds, args.steps, peak, args.jax_override)
            for n in args.configs]
    heading, text = section(rows, args, peak, native_bf16)
    replace_section(args.out_md, heading, text)
    print(f"wrote '{heading[3:]}' to {args.out_md}", flush=True)


if __name__ == "__main__":
    main()
