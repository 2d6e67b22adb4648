"""`jaxlm train` end to end on the tiny preset: it runs, its loss falls, NaN stops it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxlm.config import ModelConfig
from jaxlm.runtime.hardware import resolve_auto

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "pretrain" / "tiny.yaml")


def jaxlm(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.run(
        [sys.executable, "-m", "jaxlm.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def test_tiny_pretraining_loss_falls(tmp_path):
    proc = jaxlm(
        "train",
        TINY,
        "train.steps=20",
        "logging.every=5",
        "train.eval_batches=2",
        "train.sample_tokens=8",
        f"train.run_dir={tmp_path}",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["final_loss"] < result["first_loss"] - 0.5
    assert 1 < result["perplexity"] < 4096
    out = proc.stdout + proc.stderr
    assert "held-out loss" in out and "sample:" in out
    # tiny.yaml leaves dtype/attention to `auto`: resolved once for this machine, recorded
    model = json.loads((tmp_path / "config.json").read_text())["model"]
    assert model["dtype"] == resolve_auto(ModelConfig()).dtype != "auto"
    assert model["attention"] == "xla"  # the CPU's choice


@pytest.mark.slow
def test_sharded_cli_run_on_fake_devices(tmp_path):
    proc = jaxlm(
        "train",
        TINY,
        "train.steps=4",
        "mesh.fsdp=2",
        "mesh.tensor=2",
        "train.sample_tokens=0",
        "train.eval_batches=1",
        f"train.run_dir={tmp_path}",
        "--json",
        devices=8,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'data': 2, 'fsdp': 2, 'tensor': 2" in proc.stdout


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    proc = jaxlm(
        "train",
        TINY,
        "train.steps=20",
        "train.lr=1e30",
        "train.clip_norm=",
        "train.warmup_steps=0",
        "model.dtype=float32",
        "logging.every=1",
        f"train.run_dir={tmp_path}",
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxlm: error: training diverged at step")
    assert "train.clip_norm=1.0" in last and "model.dtype=float32" not in last  # not in effect
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bert_masked_lm_pretraining_loss_falls(tmp_path):
    """`jaxlm train model.family=bert data.mode=mlm`: the encoder learns the masked-LM task."""
    proc = jaxlm("train", TINY, "model.family=bert", "data.mode=mlm", "train.steps=30",
                 "logging.every=5", "train.eval_batches=2", f"train.run_dir={tmp_path}",
                 "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["final_loss"] < result["first_loss"] - 1.0
    assert "sample" not in result  # an encoder does not generate
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/loss" in r for r in rows)
