"""Fine-tuning with 2 real processes x 4 CPU devices (launch/local.sh) gives the per-step
losses and validation metrics of 1 process x 8 devices: every process builds the same global
batch plan and fills its own rows."""

import json
import os
import subprocess
import sys

import pytest
from finetunehelpers import ROOT, finetune_args, synthetic_dir, write_task

pytestmark = pytest.mark.slow


def metrics(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return ({r["step"]: r["train/loss"] for r in rows if "train/loss" in r},
            [r["eval/loss"] for r in rows if "eval/loss" in r])


@pytest.mark.parametrize("problem", ["single_label", "generate"])
def test_two_processes_match_one(problem, tmp_path):
    data = synthetic_dir(tmp_path / "data", n_train=48, n_eval=16)
    extra = ["finetune.head_dropout=0.0"]
    if problem == "generate":  # packed colour-task rows; validation completions generated too
        data = write_task(tmp_path / "gen", 48, 16)
        extra = ["finetune.problem=generate", "finetune.max_length=12", "data.seq_len=12",
                 "model.max_seq_len=12", "finetune.eval_samples=8"]
    overrides = finetune_args(tmp_path / "x", "none", data, "model.d_model=32",
                              "model.n_layers=1", "model.n_heads=2", "model.dtype=float32",
                              *extra, "logging.every=1",
                              "mesh.fsdp=2", "logging.tensorboard=false")[1:-1]
    overrides = [o for o in overrides if not o.startswith("finetune.run_dir=")]
    env = {**os.environ, "JAXLM": f"{sys.executable} -m jaxlm.cli", "PYTHON": sys.executable}
    two = subprocess.run(
        ["bash", str(ROOT / "launch" / "local.sh"), "-n", "2", "-d", "4", "-o",
         str(tmp_path / "logs"), "-g", "120", "finetune", *overrides,
         f"finetune.run_dir={tmp_path / 'two'}"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "jaxlm.cli", "finetune", *overrides,
         f"finetune.run_dir={tmp_path / 'one'}"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
        timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    (l2, e2), (l1, e1) = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert sorted(l1) == sorted(l2) == list(range(1, max(l1) + 1))
    assert max(l1) >= 6
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-5)
    assert e2 == pytest.approx(e1, rel=1e-5)
    if problem == "generate":  # the same completions, generated on either mesh
        two_report, one_report = (json.loads((tmp_path / d / "report.json").read_text())
                                  for d in ("two", "one"))
        assert two_report["predictions"] == one_report["predictions"]
        assert len(one_report["predictions"]) == 16
