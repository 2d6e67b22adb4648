"""The Colab notebook runs top to bottom (tiny settings, CPU), stored without outputs; and its
pretraining and fine-tuning cells run with an FSDP mesh on 8 simulated devices, the code
path of a multi-chip TPU."""

import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat")
nbclient = pytest.importorskip("nbclient", reason="the test extra installs nbclient")

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "colab_tpu.ipynb"


def run(tmp_path: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace('RUN_ROOT = "runs/colab"',
                                          f'RUN_ROOT = "{tmp_path / "runs"}"')
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this environment
    try:
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _stop_tensorboard()
    return nb


def _stop_tensorboard() -> None:
    """The %tensorboard magic leaves a server running: stop it."""
    import signal

    from tensorboard import notebook

    for info in notebook.manager.get_all():
        try:
            os.kill(info.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def outputs(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))


def test_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    text = "".join("".join(c["source"]) for c in nb["cells"])
    assert 'REPO_URL = ""' in text and "github.com/jaxlm" not in text
    assert "v2-8" in text and "8 cores" not in text  # the retired runtime is named as such


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_cpu(tmp_path):
    nb = run(tmp_path, {"JAXLM_NOTEBOOK_TINY": "1", "JAXLM_NOTEBOOK_MESH": "data",
                        "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    text = outputs(nb)
    assert "mesh: {'data': 1, 'fsdp': 1, 'tensor': 1} over 1 cpu device(s)" in text
    assert "held-out perplexity" in text and "test accuracy" in text
    assert (tmp_path / "runs" / "pretrain" / "checkpoints").is_dir()
    assert (tmp_path / "runs" / "finetune" / "labels.json").is_file()


@pytest.mark.slow
def test_notebook_on_a_simulated_pod_slice_with_fsdp(tmp_path):
    nb = run(tmp_path, {"JAXLM_NOTEBOOK_TINY": "1", "JAXLM_NOTEBOOK_MESH": "fsdp",
                        "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    text = outputs(nb)
    assert "mesh: {'data': 1, 'fsdp': 8, 'tensor': 1} over 8 cpu device(s)" in text
    assert "test accuracy" in text
    cfg = json.loads((tmp_path / "runs" / "finetune" / "config.json").read_text())
    assert cfg["mesh"]["fsdp"] == -1 and cfg["mesh"]["data"] == 1
