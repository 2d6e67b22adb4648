"""`jaxlm plan`: per-device memory from the compiled step on simulated devices, the step time
at an MFU, and the smallest change that fits."""

from pathlib import Path

import pytest

from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.models import param_count

TINY = str(Path(__file__).parents[1] / "configs" / "pretrain" / "tiny.yaml")


def test_plan_reports_memory_flops_and_step_time(capsys):
    assert main(["plan", TINY, "mesh.fsdp=8", "mesh.data=1", "--devices", "8",
                 "--device-kind", "TPU v5e", "--hbm-gib", "16"]) == 0
    out = capsys.readouterr().out
    params = param_count(load_config(TINY).model)
    per_device_mib = params * 4 / 8 / 2**20  # f32 params, FSDP over 8 devices
    line = next(x for x in out.splitlines() if x.startswith("per device:"))
    shown = float(line.split("parameters ")[1].split(" MiB")[0])
    assert shown == pytest.approx(per_device_mib, abs=0.15)
    assert "optimizer state" in line and "activations" in line
    assert "expected step time at 40% MFU" in out and "peak 197 TFLOP/s" in out
    assert "fits:" in out


@pytest.mark.slow
def test_plan_proposes_the_smallest_change_that_fits(capsys):
    assert main(["plan", TINY, "--devices", "8", "--device-kind", "TPU v5e",
                 "--hbm-gib", "0.0001"]) == 0
    out = capsys.readouterr().out
    assert "does not fit" in out and "  try mesh.data=1 mesh.fsdp=8" in out
    assert "nothing tried fits" in out or "smallest change that fits" in out


def test_plan_bad_input_is_one_line(capsys):
    assert main(["plan", TINY, "--devices", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run `jaxlm plan` in a new process" in err
    assert main(["plan", TINY, "--devices", "8", "--mfu", "1.5"]) == 2
    assert "--mfu 1.5 must be in (0, 1]" in capsys.readouterr().err
