"""Compile time of the train step against depth, with and without ``model.scan_layers``.

Lowers and compiles the jitted train step (one CPU device) of a GPT-2-style model with 12, 24
and 48 layers, each with its layers unrolled and with ``nn.scan`` over them, and writes the
seconds to the "Compile time" section of BENCHMARKS.md. Unrolled, XLA compiles every layer;
scanned, one layer body — so compile time should stay flat in depth.

    python benchmarks/compile_time.py [--layers 12 24 48] [--d-model 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from report import replace_section  # benchmarks/report.py  # noqa: E402

from jaxlm.config import load_config  # noqa: E402
from jaxlm.sharding import activate, batch_sharding, logical_rules, make_mesh  # noqa: E402
from jaxlm.tasks import pretraining_task  # noqa: E402
from jaxlm.train.optim import lr_schedule, make_optimizer  # noqa: E402
from jaxlm.train.state import create_train_state  # noqa: E402
from jaxlm.train.step import jit_train_step, make_train_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def compile_seconds(layers: int, scan: bool, d_model: int) -> float:
    cfg = load_config(None, [f"model.n_layers={layers}", f"model.d_model={d_model}",
                             "model.n_heads=4", f"model.scan_layers={str(scan).lower()}",
                             "model.max_seq_len=256", "data.seq_len=256", "mesh.data=1",
                             "train.global_batch=8"])
    mesh, rules = make_mesh(cfg), logical_rules(cfg.mesh)
    task, tx = pretraining_task(cfg), make_optimizer(cfg.train)
    state, shardings = create_train_state(task, tx, mesh, rules, 0, abstract=True)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         state, shardings)
    bs = batch_sharding(mesh, rules)
    batch = {k: jax.ShapeDtypeStruct((8, 256), jnp.float32 if k == "weights" else jnp.int32,
                                     sharding=bs)
             for k in ("inputs", "targets", "segment_ids", "positions", "weights")}
    step = jit_train_step(make_train_step(task, tx, lr_schedule(cfg.train)), shardings, bs,
                          mesh, rules)
    t0 = time.perf_counter()
    with activate(mesh, rules):
        step.jitted.lower(state, batch).compile()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, nargs="+", default=[12, 24, 48])
    p.add_argument("--d-model", type=int, default=256)
    args = p.parse_args()
    rows = []
    for n in args.layers:
        row = {scan: compile_seconds(n, scan, args.d_model) for scan in (False, True)}
        print(f"{n} layers: unrolled {row[False]:.1f} s, scan_layers {row[True]:.1f} s",
              flush=True)
        rows.append((n, row))
    lines = ["## Compile time", "",
             f"Command: `python benchmarks/compile_time.py {' '.join(sys.argv[1:])}`  ",
             f"Lower + compile of the jitted train step (forward, backward, AdamW) on one CPU "
             f"device, jax {jax.__version__}; GPT-2 style, d_model {args.d_model}, 4 heads, "
             "batch 8 x 256. The machine's other load varies, so compare rows of one run.", "",
             "| layers | unrolled (s) | `model.scan_layers=true` (s) |", "|---:|---:|---:|"]
    lines += [f"| {n} | {r[False]:.1f} | {r[True]:.1f} |" for n, r in rows]
    replace_section(ROOT / "BENCHMARKS.md", "## Compile time", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
