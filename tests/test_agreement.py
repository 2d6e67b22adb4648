"""Processes of one run that resolved different configs stop at start-up, all of them, with
one line naming the first differing key (jaxlm/runtime/agreement.py).

The exchange is tested with an in-memory key-value store and threads standing in for
processes, then once for real: two ``jaxlm train`` processes on 127.0.0.1 given different
``train.global_batch`` (which, unchecked, both ran to the end with exit 0)."""

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jaxlm.config import load_config
from jaxlm.runtime.agreement import ConfigMismatchError, check, comparable, first_difference

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "pretrain" / "tiny.yaml")


class Store:
    """The coordinator's key-value store and barrier, for threads."""

    def __init__(self, count: int) -> None:
        self.values: dict[str, str] = {}
        self.cond = threading.Condition()
        self.barrier = threading.Barrier(count)

    def key_value_set(self, key: str, value: str) -> None:
        with self.cond:
            assert key not in self.values, key  # JAX's store refuses a second set too
            self.values[key] = value
            self.cond.notify_all()

    def blocking_key_value_get(self, key: str, timeout_in_ms: int) -> str:
        with self.cond:
            assert self.cond.wait_for(lambda: key in self.values, timeout_in_ms / 1000), key
            return self.values[key]

    def wait_at_barrier(self, barrier_id: str, timeout_in_ms: int) -> None:
        self.barrier.wait(timeout_in_ms / 1000)


def run_processes(configs: list[dict]) -> list[BaseException | None]:
    store, results = Store(len(configs)), [None] * len(configs)

    def one(i: int) -> None:
        try:
            check(configs[i], store, i, len(configs), timeout_s=10)
        except BaseException as e:  # noqa: BLE001 - collected for the assertions
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def dump(*overrides: str) -> dict:
    return load_config(TINY, list(overrides)).model_dump(mode="json")


def test_same_config_passes_and_per_process_keys_are_left_out():
    configs = [dump(f"distributed.process_id={i}", f"distributed.coordinator_address=h{i}:1")
               for i in range(3)]
    assert run_processes(configs) == [None, None, None]
    assert "process_id" not in comparable(configs[0])["distributed"]


def test_every_process_stops_with_the_first_differing_key():
    configs = [dump(), dump(), dump("train.global_batch=16", "model.d_model=96")]
    errors = run_processes(configs)
    assert all(isinstance(e, ConfigMismatchError) for e in errors), errors
    assert len({str(e) for e in errors}) == 1  # the same line everywhere
    line = str(errors[0])
    assert "model.d_model is" in line and "on process 2" in line, line  # schema order
    assert "\n" not in line


def test_first_difference_walks_nested_keys_in_order():
    assert first_difference({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == ("a.c", 2, 3)
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == ("b", "<unset>", 2)
    assert first_difference({"a": [1, 2]}, {"a": [1, 2]}) is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_different_batches_both_stop_in_one_line(tmp_path):
    port, run_dir, procs = free_port(), tmp_path / "run", []
    for pid, batch in ((0, 8), (1, 16)):
        env = {**os.environ, "JAXLM_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
               "JAXLM_NUM_PROCESSES": "2", "JAXLM_PROCESS_ID": str(pid), "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "jaxlm.cli", "train", TINY, f"train.run_dir={run_dir}",
             "train.steps=2", f"train.global_batch={batch}", "logging.progress=false",
             "distributed.initialization_timeout=60"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 2, err[-3000:]
        lines = [ln for ln in err.splitlines() if ln.startswith("jaxlm: error:")]
        assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
        assert "train.global_batch is 8 on process 0 but 16 on process 1" in lines[0], lines
    assert not (run_dir / "config.json").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
