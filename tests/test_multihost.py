"""Multi-process set-up in one process: when and how jax.distributed is started, the
multi-slice (ICI x DCN) mesh, per-process logs and failing fast. The real multi-process runs
are in test_multihost_run.py."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import jax
import pytest

from jaxlm.checkpoint.checkpointer import Checkpointer
from jaxlm.config import ConfigError, DistributedConfig, load_config
from jaxlm.runtime import distributed
from jaxlm.runtime.distributed import DistributedError, detect_cluster, plan
from jaxlm.sharding import hybrid_devices, make_mesh, mesh_shapes

ROOT = Path(__file__).parents[1]
TINY = ROOT / "configs" / "pretrain" / "tiny.yaml"
EXPLICIT = {"JAXLM_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAXLM_NUM_PROCESSES": "2",
            "JAXLM_PROCESS_ID": "1"}
SLURM = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[1-4]", "SLURM_NTASKS": "4",
         "SLURM_PROCID": "2", "SLURM_LOCALID": "0"}


# ------------------------------------------------------------------ when to start, with what


def test_one_machine_without_settings_starts_nothing():
    assert plan(DistributedConfig(), {}) is None
    assert detect_cluster({}) is None


def test_environment_names_the_coordinator_and_process():
    p = plan(DistributedConfig(heartbeat_timeout=7), EXPLICIT)
    assert p is not None and p.source == "config/environment"
    assert p.kwargs["coordinator_address"] == "10.0.0.1:1234"
    assert (p.kwargs["num_processes"], p.kwargs["process_id"]) == (2, 1)
    assert p.kwargs["heartbeat_timeout_seconds"] == 7
    assert p.kwargs["shutdown_timeout_seconds"] == 300


def test_config_wins_over_environment_and_off_wins_over_all():
    cfg = DistributedConfig(coordinator_address="host0:99", num_processes=4, process_id=3)
    p = plan(cfg, EXPLICIT)
    assert p is not None
    assert (p.kwargs["coordinator_address"], p.kwargs["num_processes"],
            p.kwargs["process_id"]) == ("host0:99", 4, 3)
    assert plan(DistributedConfig(mode="off"), {**EXPLICIT, **SLURM}) is None


def test_jax_coordinator_variable_also_counts():
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAXLM_NUM_PROCESSES": "2", "JAXLM_PROCESS_ID": "0"}
    p = plan(DistributedConfig(), env)
    assert p is not None and p.kwargs["coordinator_address"] == "h:1"


@pytest.mark.parametrize("env, words", [
    ({"JAXLM_NUM_PROCESSES": "2"}, ["distributed.coordinator_address", "distributed.process_id"]),
    ({**EXPLICIT, "JAXLM_PROCESS_ID": "x"}, ["JAXLM_PROCESS_ID='x'", "not an integer"]),
    ({**EXPLICIT, "JAXLM_PROCESS_ID": "2"}, ["process id 2", "[0, 2)"]),
    ({**EXPLICIT, "JAXLM_COORDINATOR_ADDRESS": "10.0.0.1"}, ["needs a port"]),
])
def test_incomplete_or_wrong_settings_fail_in_one_line(env, words):
    with pytest.raises(DistributedError) as err:
        plan(DistributedConfig(), env)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_mode_on_needs_something_to_go_on():
    with pytest.raises(DistributedError, match="distributed.mode=on"):
        plan(DistributedConfig(mode="on"), {})


def test_slurm_step_is_detected_and_left_to_jax():
    assert detect_cluster(SLURM) == "slurm"
    p = plan(DistributedConfig(), SLURM)
    assert p is not None and p.source == "slurm"
    assert p.kwargs["coordinator_address"] is None and p.kwargs["process_id"] is None
    assert detect_cluster({**SLURM, "SLURM_NTASKS": "1"}) is None  # a one-task job
    assert plan(DistributedConfig(), {**SLURM, "SLURM_NTASKS": "1"}) is None


def test_other_clusters_are_detected():
    assert detect_cluster({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "8"}) == "ompi"
    assert detect_cluster({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "1"}) is None
    assert detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == "gke-tpu"


def test_config_sections_and_checks():
    cfg = load_config(TINY, ["distributed.heartbeat_timeout=5", "distributed.process_id=1",
                             "distributed.num_processes=2", "mesh.dcn_data=2"])
    assert cfg.distributed.heartbeat_timeout == 5 and cfg.mesh.dcn_data == 2
    with pytest.raises(ConfigError, match="process_id=2 must be below"):
        load_config(TINY, ["distributed.process_id=2", "distributed.num_processes=2"])
    with pytest.raises(ConfigError, match="dcn_data"):
        load_config(TINY, ["mesh.dcn_data=0"])
    with pytest.raises(ConfigError, match="distributed.mode"):
        load_config(TINY, ["distributed.mode=maybe"])


def test_one_process_run_initializes_as_single():
    me = distributed.initialize(DistributedConfig(), {})
    assert (me.index, me.count, me.multi) == (0, 1, False)
    assert distributed.info().count == 1
    distributed.exit_if_failed(3)  # one process: a no-op (the caller exits normally)


# ------------------------------------------------------------------------- multi-slice mesh


def test_mesh_shapes_split_ici_and_dcn():
    cfg = load_config(TINY, ["mesh.dcn_data=2"])
    assert mesh_shapes(cfg, 8) == ((4, 1, 1), (2, 1, 1))
    cfg = load_config(TINY, ["mesh.data=2", "mesh.fsdp=-1", "mesh.dcn_data=2"])
    assert mesh_shapes(cfg, 8) == ((2, 2, 1), (2, 1, 1))
    assert mesh_shapes(load_config(TINY), 8) == ((8, 1, 1), (1, 1, 1))


def test_mesh_shapes_check_the_whole_mesh():
    with pytest.raises(ConfigError, match="3 slices do not divide the 8 devices"):
        mesh_shapes(load_config(TINY, ["mesh.dcn_data=3"]), 8)
    with pytest.raises(ConfigError, match="within each of the 2 slices"):
        mesh_shapes(load_config(TINY, ["mesh.data=3", "mesh.dcn_data=2"]), 8)
    # 2 slices x data 8 = 16-way data parallel: the batch of 8 no longer divides
    with pytest.raises(ConfigError, match="data-parallel size data\\*fsdp=16"):
        mesh_shapes(load_config(TINY, ["mesh.dcn_data=2"]), 16)


def test_hybrid_device_order_puts_slices_outermost():
    fake = [SimpleNamespace(id=i, process_index=i % 2, platform="cpu", device_kind="cpu")
            for i in range(8)]
    grid = hybrid_devices((2, 2, 1), (2, 1, 1), fake)
    assert grid.shape == (4, 2, 1)
    procs = [[d.process_index for d in row] for row in grid[:, :, 0]]
    assert procs == [[0, 0], [0, 0], [1, 1], [1, 1]]  # data axis: process 0's half, then 1's


def test_dcn_sizes_must_match_the_slices():
    cfg = load_config(TINY, ["mesh.dcn_data=2"])
    with pytest.raises(ConfigError, match="the devices form 1 processes"):
        make_mesh(cfg)
    assert jax.process_count() == 1


# -------------------------------------------------------------------- logs and failing fast


def test_one_process_log_file_gets_jaxlm_records(tmp_path):
    path = distributed.setup_process_log(tmp_path, capture=False)
    assert path == tmp_path / "logs" / "process_0.log"
    distributed.log.info("hello from the test")
    assert "jaxlm[0] INFO hello from the test" in path.read_text()


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "JAXLM_LOG_DIR": ""})


def test_transcript_survives_an_abort_and_keeps_the_last_redraw(tmp_path):
    proc = _python("""
        import os, sys
        from jaxlm.runtime import distributed
        distributed.setup_process_log(sys.argv[1], process_index=3, capture=True)
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        sys.stderr.write("\\rbar 10%\\rbar 50%\\rbar 100%\\n")
        os.write(2, b"F0000 from C++ just before the end\\n")
        os.abort()
    """, tmp_path)
    assert proc.returncode != 0
    assert "to stdout" in proc.stdout and "to stderr" in proc.stderr  # still shown here
    text = (tmp_path / "logs" / "process_3.log").read_text()
    assert "to stdout" in text and "to stderr" in text and "from C++" in text
    assert "bar 100%" in text and "bar 50%" not in text


def test_failed_process_of_a_multi_process_run_exits_at_once(tmp_path):
    proc = _python("""
        import atexit
        from jaxlm.runtime import distributed
        atexit.register(lambda: print("atexit ran (JAX's shutdown barrier would wait here)"))
        distributed._info = distributed.ProcessInfo(1, 2, "test")
        distributed.exit_if_failed(0)
        print("still running after a success")
        distributed.exit_if_failed(3)
        print("not reached")
    """, tmp_path)
    assert proc.returncode == 3
    assert "still running" in proc.stdout and "not reached" not in proc.stdout
    assert "atexit ran" not in proc.stdout


def test_a_save_that_fails_in_a_collective_names_the_lost_process(tmp_path, monkeypatch):
    """A peer killed during an async save fails the save's gloo all-gather: the error says a
    process probably died (not "free disk space"), and one process alone keeps the disk hint."""
    class Manager:
        def reload(self) -> None:
            pass

        def all_steps(self) -> list[int]:
            return [5]

    ckpt = Checkpointer.__new__(Checkpointer)  # only what _failed reads
    ckpt.manager, ckpt._in_flight, ckpt.directory = Manager(), 10, tmp_path / "checkpoints"
    err = RuntimeError("UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error "
                       "[127.0.0.1]:34197: Connection reset by peer")
    monkeypatch.setattr(distributed, "_info", distributed.ProcessInfo(0, 2, "test"))
    text = str(ckpt._failed(10, err))
    assert "could not write checkpoint step 10" in text and "latest complete: step 5" in text
    assert "has probably died" in text and "free disk space" not in text
    monkeypatch.setattr(distributed, "_info", None)
    text = str(ckpt._failed(10, OSError("No space left on device")))
    assert "free disk space" in text and "has probably died" not in text
