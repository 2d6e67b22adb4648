"""The Colab notebook runs top to bottom (tiny settings, CPU), stored without outputs; and its
pretraining and fine-tuning cells run with an FSDP mesh on 8 simulated devices, the code
path of a multi-chip TPU. In the fast lane: its set-up cells (Drive, install, devices) in a
kernel, the order of its cells, its TPU detection on fake device trees, and the messages of
the run-directory lock a dead Colab session leaves behind."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxlm.runtime.hardware import tpu_chips
from jaxlm.runtime.runlock import LOCK, STALE_S, RunDirInUse, RunLock

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


def cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.get("id") == cell_id)


def dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def plant_lock(run_dir: Path, **holder: object) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(),
                                "command": "train", "process": 0, "started": 0, **holder}))
    return lock


def test_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
    text = "".join("".join(c["source"]) for c in nb["cells"])
    assert 'REPO_URL = ""' in text and "github.com/jaxlm" not in text
    assert "v2-8" in text and "8 cores" not in text  # the retired runtime is named as such


def test_cells_come_in_the_order_they_are_needed():
    """Drive before anything writes a run; TensorBoard started before the training cell, so
    the run can be watched live."""
    ids = [c.get("id") for c in nbformat.read(NOTEBOOK, as_version=4).cells]
    order = ["settings", "drive", "install", "devices", "tensorboard", "pretrain", "finetune"]
    assert [ids.index(i) for i in order] == sorted(ids.index(i) for i in order)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert "%tensorboard --logdir {RUN_ROOT}" in cell(nb, "tensorboard").source
    assert "train(cfg)" in cell(nb, "pretrain").source
    assert "Restart session" in cell(nb, "install-md").source  # the note where the install is


def test_tpu_chips_are_found_by_their_device_files(tmp_path):
    """Colab's TPU runtime (v5e, v6e) shows its chips as VFIO groups, v4 / v5p as accel
    devices; the VFIO control node and a CPU or GPU machine's /dev have no chips."""
    vfio = tmp_path / "v5e" / "dev" / "vfio"
    vfio.mkdir(parents=True)
    for name in ("vfio", "0"):
        (vfio / name).touch()
    assert tpu_chips(tmp_path / "v5e") == ["/dev/vfio/0"]
    accel = tmp_path / "v4" / "dev"
    accel.mkdir(parents=True)
    for name in ("accel0", "accel1", "accelerometer"):
        (accel / name).touch()
    assert tpu_chips(tmp_path / "v4") == ["/dev/accel0", "/dev/accel1"]
    (tmp_path / "cpu" / "dev").mkdir(parents=True)
    assert tpu_chips(tmp_path / "cpu") == []
    assert tpu_chips(tmp_path / "nothing") == []


def test_setup_cells_on_a_cpu_off_colab(tmp_path):
    """The set-up cells in a kernel, with jaxlm installed: the Drive cell skips off Colab,
    the install cell installs nothing, the devices cell says there is no TPU. The install's
    restart note names what it replaced. With jaxlm missing, no checkout and no REPO_URL,
    the install cell stops with one line naming REPO_URL, not a traceback."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    settings = cell(nb, "settings")
    settings.source = (settings.source.replace("USE_DRIVE = False", "USE_DRIVE = True")
                       .replace('RUN_ROOT = "runs/colab"', f'RUN_ROOT = "{tmp_path / "runs"}"'))
    probes = [nbformat.v4.new_code_cell(src) for src in (
        "print(restart_note({'jax': '0.0.1', 'numpy': '1.0'}, {'jax': '9.9', 'numpy': '1.0', "
        "'new-dist': '1'}, {'jax', 'numpy'}))",
        "print(restart_note({'jax': '0.0.1'}, {'jax': '9.9'}, set()))",
        "import sys; sys.modules['jaxlm'] = None  # as if jaxlm were not installed")]
    again = nbformat.v4.new_code_cell(cell(nb, "install").source)  # the install, re-run
    todo = [settings, cell(nb, "drive"), cell(nb, "install"), cell(nb, "devices"), *probes,
            again]
    client = nbclient.NotebookClient(nbformat.v4.new_notebook(cells=todo), timeout=120,
                                     kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        for i, c in enumerate(todo):
            client.execute_cell(c, i)

    def text(c: nbformat.NotebookNode) -> str:
        assert not [o for o in c.outputs if o.output_type == "error"], c.outputs
        return "".join(o.get("text", "") for o in c.outputs)

    assert text(todo[1]).startswith("not on Colab: no Google Drive to mount (skipped)")
    assert text(todo[2]) == "jaxlm from site-packages\n"  # tmp_path: not a checkout
    devices = text(todo[3])
    assert devices.startswith("no TPU on this runtime (no /dev/vfio/* or /dev/accel* chips): "
                              "JAX runs on cpu")
    assert "Runtime → Change runtime type → TPU" in devices
    assert text(todo[4]).startswith("restart the runtime now (Runtime → Restart session)")
    assert "replaced jax 0.0.1 → 9.9, which" in text(todo[4]) and "numpy" not in text(todo[4])
    assert text(todo[5]) == "None\n"  # nothing the kernel had imported was replaced
    stop = [o for o in todo[-1].outputs if o.output_type == "error"]
    assert len(stop) == 1 and len(stop[0].traceback) == 1  # one line, no traceback
    assert stop[0].traceback[0].startswith("jaxlm is not installed and this notebook is not "
                                           "in a jaxlm checkout: set REPO_URL in the Settings")
    assert not [o for o in todo[-1].outputs if o.output_type == "stream"]  # no pip, no clone


def test_a_lock_left_by_a_dead_session_is_taken_over_saying_so(tmp_path):
    """Restart session on Colab: the same machine, the old kernel's pid is gone."""
    lock = plant_lock(tmp_path / "run")
    dead = json.loads(lock.read_text())["pid"]
    said: list[str] = []
    with RunLock(tmp_path / "run", "train", log=said.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert len(said) == 1 and said[0].startswith(
        f"warning: taking over the run directory lock {lock} of `jaxlm train` on host ")
    assert said[0].endswith(f"a stale lock: that run is no longer running: pid {dead} is gone "
                            "from this host")
    assert not lock.exists()


def test_a_lock_left_by_an_earlier_run_in_this_kernel_is_taken_over(tmp_path):
    lock = plant_lock(tmp_path / "run", pid=os.getpid())
    said: list[str] = []
    with RunLock(tmp_path / "run", "train", log=said.append):
        with pytest.raises(RunDirInUse):  # while this process holds it, it is in use
            RunLock(tmp_path / "run", "train").acquire()
    assert said and said[0].endswith("a stale lock: it was left by an earlier run in this "
                                     "process")
    assert not lock.exists()


def test_a_lock_of_another_machine_says_when_it_will_be_taken_over(tmp_path):
    """A new Colab session on Drive within two minutes of the old one's end: its pid cannot
    be checked, so the message says how long until its heartbeat counts as stale, or what to
    delete; later the lock is taken over."""
    lock = plant_lock(tmp_path / "run", host="another-colab-vm", pid=1)
    os.utime(lock, (time.time() - 30, time.time() - 30))
    with pytest.raises(RunDirInUse) as err:
        RunLock(tmp_path / "run", "train").acquire()
    msg = str(err.value)
    assert "in use by `jaxlm train` on host another-colab-vm (pid 1, process 0)" in msg
    assert "its lock was refreshed 30 s ago" in msg and "Colab session ended" in msg
    assert f"run again in {STALE_S - 30:.0f} s, or delete {lock} now" in msg
    os.utime(lock, (time.time() - STALE_S - 5, time.time() - STALE_S - 5))
    said: list[str] = []
    with RunLock(tmp_path / "run", "train", log=said.append):
        pass
    assert said and "a stale lock: that run is no longer running: its heartbeat stopped" \
        in said[0]


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_cpu(tmp_path):
    plant_lock(tmp_path / "runs" / "pretrain")  # an earlier session died while training
    nb = run(tmp_path, {"JAXLM_NOTEBOOK_TINY": "1", "JAXLM_NOTEBOOK_MESH": "data",
                        "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    text = outputs(nb)
    assert "mesh: {'data': 1, 'fsdp': 1, 'tensor': 1} over 1 cpu device(s)" in text
    assert "held-out perplexity" in text and "test accuracy" in text
    assert "taking over the run directory lock" in text and "a stale lock" in text
    assert "no TPU on this runtime" in text
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
