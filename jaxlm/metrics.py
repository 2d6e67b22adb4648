"""Where the numbers go: TensorBoard event files, a JSONL log and the terminal.

Only process 0 writes (other processes get a writer that does nothing). TensorBoard files
are written with tensorboardX, which needs no TensorFlow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


class MetricsWriter:
    """Scalars, text and hyperparameters → ``RUN_DIR/tensorboard`` and ``RUN_DIR/metrics.jsonl``."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 jsonl: bool = True) -> None:
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), flush_secs=10)
        if jsonl:
            self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115

    def scalars(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
        """Log a dict of scalars under ``prefix/name`` at ``step``."""
        if not self.enabled:
            return
        clean = {f"{prefix}{k}": float(np.asarray(v)) for k, v in values.items()}
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, "time": time.time(), **clean}) + "\n")

    def text(self, step: int, tag: str, text: str) -> None:
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.add_text(tag, text, step)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, "time": time.time(), tag: text}) + "\n")

    def config(self, cfg: dict[str, Any]) -> None:
        """The resolved config, as pretty JSON text and as TensorBoard hparams."""
        if not self.enabled or self._tb is None:
            return
        self._tb.add_text("config", "```\n" + json.dumps(cfg, indent=2) + "\n```", 0)
        flat = _flatten(cfg)
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                   for k, v in flat.items()}
        self._tb.add_hparams(hparams, {}, name=".", global_step=0)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
