"""Per-device memory of the large presets across meshes, from ``jaxlm plan``.

Runs ``jaxlm plan`` (in a fresh process per device count: the simulated devices are fixed
at start-up) for ``gpt2_124m`` and ``llama_1b`` on a few meshes and writes the figures to the
"Memory per device (jaxlm plan)" section of BENCHMARKS.md.

    python benchmarks/plan_memory.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from report import replace_section  # benchmarks/report.py

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # (preset, devices, device kind, HBM GiB, overrides)
    ("gpt2_124m", 1, "TPU v5e", 16, []),
    ("gpt2_124m", 1, "TPU v5e", 16, ["train.grad_accum=16"]),
    ("gpt2_124m", 8, "TPU v5e", 16, ["mesh.data=8"]),
    ("gpt2_124m", 8, "TPU v5e", 16, ["mesh.data=1", "mesh.fsdp=8"]),
    ("llama_1b", 8, "TPU v5e", 16, []),
    ("llama_1b", 8, "TPU v5e", 16, ["mesh.fsdp=4", "mesh.tensor=2"]),
    ("llama_1b", 8, "TPU v5e", 16, ["mesh.data=8", "mesh.fsdp=1"]),
]


def run(preset: str, devices: int, kind: str, hbm: float, overrides: list[str]) -> str:
    cmd = [sys.executable, "-m", "jaxlm.cli", "plan", f"configs/pretrain/{preset}.yaml",
           *overrides, "--devices", str(devices), "--device-kind", kind, "--hbm-gib", str(hbm)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        sys.exit(out.stderr[-2000:])
    return out.stdout


def main() -> None:
    lines = ["## Memory per device (jaxlm plan)", "",
             "Command: `python benchmarks/plan_memory.py` (each row: `jaxlm plan "
             "configs/pretrain/PRESET.yaml OVERRIDES --devices N --device-kind 'TPU v5e' "
             "--hbm-gib 16`). From XLA's memory analysis of the train step compiled for N "
             "simulated devices on the CPU compiler: estimates, not measured on a TPU.", "",
             "| preset | devices | overrides | mesh | params | optimizer | temporaries | total "
             "| step at 40% MFU | fits 16 GiB? |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for preset, devices, kind, hbm, overrides in CASES:
        text = run(preset, devices, kind, hbm, overrides)
        mesh = re.search(r"mesh (\{[^}]*\})", text).group(1)
        per = re.search(r"parameters ([\d.]+ \w+), optimizer state ([\d.]+ \w+), activations "
                        r"and other temporaries ([\d.]+ \w+); step total ~([\d.]+ \w+)", text)
        step = re.search(r"MFU: ([\d.e+-]+) s", text)
        fits = "yes" if "\nfits:" in text else "no"
        fix = re.search(r"smallest change that fits: (.*?) \(", text)
        print(f"{preset} x{devices} {' '.join(overrides)}: {per.groups()} fits={fits}",
              flush=True)
        lines.append(f"| {preset} | {devices} | `{' '.join(overrides) or '-'}` | {mesh} | "
                     + " | ".join(per.groups()) + f" | {step.group(1) if step else '?'} s | "
                     + (fits if fits == "yes" or not fix else f"no: `{fix.group(1)}` fits")
                     + " |")
    replace_section(ROOT / "BENCHMARKS.md", "## Memory per device (jaxlm plan)",
                    "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
