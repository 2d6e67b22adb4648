"""Residual-projection init and the weight-decay rule, measured on the default pretraining run.

Trains the default run (embedded Shakespeare, the default GPT-2-style model and schedule) with
each combination of ``model.residual_init`` (plain 0.02 / scaled 0.02/sqrt(2 n_layers), as
GPT-2 and nanoGPT) and ``train.decay_exclude`` (by name: norms and biases / by rank: every
parameter of rank < 2, nanoGPT's rule), over a few seeds, and writes the held-out loss to the
"Residual init and weight-decay rule" section of BENCHMARKS.md. One CPU device.

    python benchmarks/init_and_decay.py [--seeds 0 1] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

from report import BENCHMARKS_MD, replace_section  # benchmarks/report.py  # noqa: E402

from jaxlm.config import load_config  # noqa: E402
from jaxlm.runtime.hardware import describe_cpu  # noqa: E402
from jaxlm.train.pretrain import train  # noqa: E402

VARIANTS = {  # name: overrides
    "plain init, decay by name (default)": ["model.residual_init=plain",
                                            "train.decay_exclude=[norms,biases]"],
    "scaled init, decay by name": ["model.residual_init=scaled",
                                   "train.decay_exclude=[norms,biases]"],
    "plain init, decay by rank": ["model.residual_init=plain", "train.decay_exclude=[vectors]"],
    "scaled init, decay by rank": ["model.residual_init=scaled",
                                   "train.decay_exclude=[vectors]"],
}


def run(overrides: list[str], seed: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [*overrides, f"train.seed={seed}", f"train.steps={steps}",
                                 f"train.eval_every={steps}", f"checkpoint.every={steps}",
                                 f"train.run_dir={tmp}/run", "mesh.data=1"])
        return float(train(cfg)["eval_loss"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    rows, t0 = [], time.perf_counter()
    for name, overrides in VARIANTS.items():
        losses = [run(overrides, s, args.steps) for s in args.seeds]
        mean = statistics.mean(losses)
        spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
        rows.append((name, losses, mean, spread))
        print(f"{name}: held-out loss {mean:.4f} ± {spread:.4f} (seeds {args.seeds}: "
              f"{', '.join(f'{x:.4f}' for x in losses)})", flush=True)
    base = rows[0][2]
    table = "\n".join(
        f"| {name} | {mean:.4f} ± {spread:.4f} | {mean - base:+.4f} | "
        f"{', '.join(f'{x:.4f}' for x in losses)} |" for name, losses, mean, spread in rows)
    command = "python benchmarks/init_and_decay.py " + " ".join(sys.argv[1:])
    body = f"""## Residual init and weight-decay rule

`{command.strip()}` — the default pretraining run ({args.steps} steps, embedded Shakespeare,
default model), one CPU device, {describe_cpu()}, seeds {args.seeds}; held-out loss (nats/token)
at the end, mean ± standard deviation over the seeds ({time.perf_counter() - t0:.0f} s in all).
*Scaled init* draws the two projections that write into the residual stream (attention out,
MLP down) with 0.02/sqrt(2 n_layers) (GPT-2, nanoGPT; `model.residual_init=scaled`); *decay by
rank* skips weight decay for every parameter of rank < 2 (nanoGPT; `train.decay_exclude=[vectors]`),
where the default skips modules named *norm* and leaves named *bias*.

| variant | held-out loss | vs default | per seed |
|---|---|---|---|
{table}
"""
    replace_section(BENCHMARKS_MD, "## Residual init and weight-decay rule", body)
    print(f"wrote {BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
