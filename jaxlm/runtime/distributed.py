"""Multi-process runs: starting ``jax.distributed``, per-process logs, failing fast.

One jaxlm run on several hosts is several identical processes, one per host (or per GPU),
that find each other through a coordinator (process 0) and then run the same jitted program
on a mesh over all their devices. :func:`start` does the per-process set-up, once, before
anything touches a device:

* **Who am I.** The coordinator address, process count and process id come from, in order:
  the config (``distributed.*``), the environment (``JAXLM_COORDINATOR_ADDRESS``,
  ``JAXLM_NUM_PROCESSES``, ``JAXLM_PROCESS_ID``; ``JAX_COORDINATOR_ADDRESS`` also works),
  or JAX's own cluster detection, used when a cluster is recognized from its environment:
  Cloud TPU VMs and GKE TPU pods, SLURM steps with several tasks, Open MPI (``mpirun``).
  Nothing of that (a laptop, a single GPU box) means one process and no coordinator.
* **The coordinator port** is checked first (:mod:`jaxlm.runtime.coordinator`): process 0 fails in
  one line if it cannot listen there, and the others if what answers at the coordinator
  address is not a gRPC server (the port is taken), instead of a crash and a 300 s wait.
* **Logs.** Every process writes ``RUN_DIR/logs/process_N.log`` (or ``$JAXLM_LOG_DIR``;
  :mod:`jaxlm.runtime.process_log`). In a multi-process run it is a transcript of everything the
  process writes to stdout and stderr, at the file-descriptor level, so JAX/XLA runtime
  messages, tracebacks and crash reports are in it; the terminal gets one ``jaxlm: error:``
  line for a failure. In a one-process run it holds jaxlm's log records. Only process 0
  prints progress and writes metrics (the loop).
* **Failing in bounded time.** JAX's coordination service (on process 0) expects a heartbeat
  from every process; when one dies or hangs for ``distributed.heartbeat_timeout`` seconds,
  the service tells all others and JAX terminates them from C++ (``Terminating process
  because the JAX distributed service detected fatal errors ... (stopped sending
  heartbeats)``, exit status 134, SIGABRT). If process 0 itself dies, the others fail at once
  (the coordinator's socket closes); a peer that dies in the middle of a CPU collective can
  also surface first, and at once, as gloo's error (a Python exception, or gloo's own abort).
  Each of these ends the survivors with one ``jaxlm: error: process I of N ...`` line naming
  the cause (the C++ report and any traceback go to the log). A process that *fails* in
  Python (an exception, a bad checkpoint) prints one ``jaxlm: error:`` line and calls
  :func:`exit_if_failed`, which ends it immediately instead of waiting at JAX's shutdown
  barrier (up to ``shutdown_timeout``, with everyone else stuck in a collective), so the
  others learn of it within the heartbeat timeout.

Relaunching the same command then resumes from the last checkpoint (``checkpoint.resume``
is ``auto`` by default).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxlm.config import Config, DistributedConfig
from jaxlm.errors import TrainingError, UserError
from jaxlm.runtime import agreement, process_log, rundir
from jaxlm.runtime.coordinator import check_port_free, wait_for_coordinator
from jaxlm.runtime.process_log import log_only

log = logging.getLogger("jaxlm")

ENV_COORDINATOR = "JAXLM_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAXLM_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXLM_PROCESS_ID"
FATAL_MARKER = "JAX distributed service detected fatal errors"  # JAX's message, for tests/docs


class DistributedError(UserError):
    """The multi-process settings are incomplete or contradictory (one line, exit code 2)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """How :func:`initialize` will call ``jax.distributed.initialize``, and why."""

    kwargs: dict[str, Any]
    source: str  # "config/environment", or the detected cluster: "slurm", "ompi", "tpu", ...


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """This process's place in the run, as known after :func:`initialize`."""

    index: int
    count: int
    source: str  # "single" when jax.distributed was not started
    coordinator: str | None = None
    heartbeat_timeout: int | None = None

    @property
    def multi(self) -> bool:
        return self.count > 1


_info: ProcessInfo | None = None


# ------------------------------------------------------------------------------ detection


def _has_tpu_chips() -> bool:
    """True on a machine with Google TPU chips (PCI vendor 0x1ae0), as JAX itself checks."""
    try:
        vendors = Path("/sys/bus/pci/devices").glob("*/vendor")
        return any(v.read_text().strip() == "0x1ae0" for v in vendors)
    except OSError:
        return False


def _count(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ.get(key, "1"))
    except ValueError:
        return 1


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The multi-process cluster this process runs in, judged from its environment only.

    ``"slurm"`` (an ``srun`` step of several tasks), ``"ompi"`` (``mpirun`` with several
    ranks), ``"gke-tpu"`` (a TPU pod on GKE), ``"tpu"`` (a Cloud TPU VM; JAX asks the metadata
    server for the workers) or ``None``. These are the environments JAX's
    ``jax.distributed.initialize()`` fills in by itself. The TPU-VM check looks for TPU chips
    in /sys and is made only for the real environment (``environ=None``).
    """
    env = os.environ if environ is None else environ
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
             "SLURM_LOCALID")
    if all(k in env for k in slurm) and _count(env, "SLURM_NTASKS") > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and _count(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return "ompi"
    if env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES"):
        return "gke-tpu"
    if environ is None and _has_tpu_chips() and not env.get("TPU_SKIP_MDS_QUERY"):
        return "tpu"
    return None


def _env_int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {key}={raw!r} is not an integer") from None


def plan(cfg: DistributedConfig, environ: Mapping[str, str] | None = None) -> Plan | None:
    """Decide whether and how to start ``jax.distributed``; ``None`` means one process.

    Explicit values (config first, then ``JAXLM_*`` environment variables) win; what they
    leave open is filled in by JAX's cluster detection where a cluster is detected.
    """
    env = os.environ if environ is None else environ
    if cfg.mode == "off":
        return None
    coordinator = (cfg.coordinator_address or env.get(ENV_COORDINATOR)
                   or env.get("JAX_COORDINATOR_ADDRESS") or None)
    num = cfg.num_processes if cfg.num_processes is not None else _env_int(env, ENV_NUM_PROCESSES)
    pid = cfg.process_id if cfg.process_id is not None else _env_int(env, ENV_PROCESS_ID)
    cluster = detect_cluster(environ)
    explicit = any(v is not None for v in (coordinator, num, pid))
    if not explicit and cluster is None:
        if cfg.mode == "on":
            raise DistributedError(
                "distributed.mode=on but no cluster was detected and no coordinator is set; set "
                f"distributed.coordinator_address/num_processes/process_id (or {ENV_COORDINATOR}"
                f", {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})")
        return None
    if cluster is None:
        missing = [name for name, v in (("coordinator_address", coordinator),
                                        ("num_processes", num), ("process_id", pid)) if v is None]
        if missing:
            raise DistributedError(
                f"a multi-process run needs distributed.{', distributed.'.join(missing)} (or "
                f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); only some are set "
                "and no cluster was detected to fill in the rest")
        assert num is not None and pid is not None
        if not 0 <= pid < num:
            raise DistributedError(f"process id {pid} is not in [0, {num}) "
                                   f"(num_processes={num})")
        if ":" not in coordinator.rsplit("]", 1)[-1]:
            raise DistributedError(f"coordinator address {coordinator!r} needs a port: host:port")
    kwargs: dict[str, Any] = dict(
        coordinator_address=coordinator, num_processes=num, process_id=pid,
        local_device_ids=cfg.local_device_ids,
        initialization_timeout=cfg.initialization_timeout,
        heartbeat_timeout_seconds=cfg.heartbeat_timeout,
        shutdown_timeout_seconds=cfg.shutdown_timeout,
    )
    return Plan(kwargs, "config/environment" if explicit else cluster)


# ---------------------------------------------------------------------------- initializing


def initialize(cfg: DistributedConfig, environ: Mapping[str, str] | None = None) -> ProcessInfo:
    """Start ``jax.distributed`` if this run has several processes (see :func:`plan`).

    Idempotent: later calls return the first result. Must run before any JAX computation.
    Raises :class:`DistributedError` for incomplete settings,
    :class:`~jaxlm.runtime.coordinator.CoordinatorPortError` when the coordinator port is taken (on
    every process, within seconds), and :class:`TrainingError` when the processes cannot
    connect within ``distributed.initialization_timeout``.
    """
    global _info
    if _info is not None:
        return _info
    import jax

    if jax.distributed.is_initialized():  # started by the caller (a notebook, a test harness)
        _info = ProcessInfo(jax.process_index(), jax.process_count(), "caller")
        _after_start()
        return _info
    p = plan(cfg, environ)
    if p is None:
        _info = ProcessInfo(0, 1, "single")
        return _info
    kw = p.kwargs
    where = (f"process {kw['process_id']} of {kw['num_processes']}"
             if kw["process_id"] is not None else "this process")
    if kw["coordinator_address"] and kw["process_id"] is not None:  # fail in seconds, 1 line
        if kw["process_id"] == 0:
            check_port_free(kw["coordinator_address"])
        else:
            wait_for_coordinator(kw["coordinator_address"], kw["initialization_timeout"])
    try:
        jax.distributed.initialize(**kw)
    except RuntimeError as e:
        text = str(e)
        if "must be called before" in text:  # JAX computations already ran here
            raise DistributedError(
                "jax.distributed must be started before any JAX computation; call "
                "jaxlm.runtime.distributed.start(cfg) first thing") from None
        raise TrainingError(
            f"{where} could not join the run at {kw['coordinator_address'] or p.source} "
            f"within distributed.initialization_timeout={kw['initialization_timeout']}s: "
            f"{_first_line(text)}; check that every process was started with the same "
            "coordinator and process count, and that the port is reachable") from None
    except ValueError as e:  # a detected cluster that could not supply all the values
        raise DistributedError(f"jax.distributed could not be set up from the {p.source} "
                               f"environment: {_first_line(str(e))}") from None
    coordinator = kw["coordinator_address"] or f"auto-detected ({p.source})"
    _info = ProcessInfo(jax.process_index(), jax.process_count(), p.source, coordinator,
                        cfg.heartbeat_timeout)
    _after_start()
    return _info


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:400] if lines else "unknown error"


# How long the coordinator's process keeps its coordination service up after the shutdown
# barrier, so that the other processes' last RPCs land before the gRPC server is destroyed.
SERVICE_GRACE_S = 1.0


def shutdown() -> None:
    """Leave ``jax.distributed`` cleanly: preemption manager, client (JAX's shutdown barrier
    with every process), then, in the coordinator's process only, the coordination service
    after :data:`SERVICE_GRACE_S`.

    JAX's own exit handler destroys the service straight after the barrier; a heartbeat or
    disconnect from another process that arrives in that instant aborts the coordinator's
    process in gRPC (``server.cc: Check failed: queue.Pop() == nullptr``, SIGABRT) after a
    run that succeeded. Registered at exit for multi-process runs; safe to call twice.
    """
    from jax._src import distributed as jax_distributed  # the service handle is not public

    state = jax_distributed.global_state
    service, state.service = state.service, None
    state.shutdown()  # preemption sync manager, then the client's shutdown barrier
    if service is not None:
        time.sleep(SERVICE_GRACE_S)
        service.shutdown()


def _after_start() -> None:
    """Multi-process only: uncaught exceptions end this process at once (see module doc),
    and the exit leaves ``jax.distributed`` in the right order (:func:`shutdown`)."""
    if _info is None or not _info.multi:
        return
    atexit.register(shutdown)  # runs before JAX's own handler (registered at its import)
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        # The traceback is for the log; the terminal gets one line (the others' logs say more).
        if not log_only("".join(traceback.format_exception(kind, value, tb))):
            previous(kind, value, tb)
        print(f"jaxlm: error: {describe_failure(value)}", file=sys.stderr)
        exit_if_failed(1)

    sys.excepthook = hook


_PEER_SIGNS = ("gloo", "nccl", "coordination service", "connection reset", "socket closed",
               "deadline_exceeded", "unavailable", "barrier")


PEER_LOST = ("a collective or coordination call with the other processes failed, so another "
             "process has probably died or hung (see its log in RUN_DIR/logs/); relaunch the "
             "same command to resume from the last checkpoint")


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a failed collective or coordination call of a multi-process run:
    the sign that another process died or hung, not that this one went wrong."""
    return info().multi and any(sign in str(err).lower() for sign in _PEER_SIGNS)


def describe_failure(err: BaseException) -> str:
    """One line for an uncaught exception in a multi-process run, naming the likely cause
    when it is a failed collective or coordination call (another process died or hung)."""
    me = info()
    what = f"process {me.index} of {me.count} failed: {type(err).__name__}: {_first_line(str(err))}"
    return f"{what}; {PEER_LOST}" if lost_peer(err) else what


def info() -> ProcessInfo:
    """This process's place in the run (one process until :func:`initialize` says more)."""
    return _info if _info is not None else ProcessInfo(0, 1, "single")


def exit_if_failed(code: int) -> None:
    """End a failed process of a multi-process run now, skipping JAX's shutdown barrier.

    A normal exit waits at that barrier for every other process (up to
    ``distributed.shutdown_timeout``) while the others wait for this one in their next
    collective; exiting at once lets them see the missing heartbeats and stop within
    ``distributed.heartbeat_timeout``. Does nothing for ``code == 0`` or one process.
    """
    if code == 0 or _info is None or not _info.multi:
        return
    process_log.flush()
    log_only(f"{time.strftime('%Y-%m-%d %H:%M:%S')} jaxlm[{_info.index}] ERROR process "
             f"{_info.index} of {_info.count} failed (exit code {code}); ending it now so that "
             "the other processes stop too\n")
    logging.shutdown()
    os._exit(code)


# -------------------------------------------------------------------------------- logging


def setup_process_log(run_dir: str | Path, process_index: int | None = None,
                      capture: bool | None = None) -> Path:
    """Start ``process_N.log`` for this process (see :func:`jaxlm.runtime.process_log.start`);
    ``capture`` defaults to "several processes"."""
    me = info()
    return process_log.start(run_dir, me.index if process_index is None else process_index,
                             me.count, me.multi if capture is None else capture)


def start(cfg: Config, setting: str = "train.run_dir") -> ProcessInfo:
    """Everything a process does first: :func:`initialize`, a check that the run directory
    named by ``setting`` (``train.run_dir`` or ``finetune.run_dir``) can be written, then
    :func:`setup_process_log` in it. Safe to call more than once."""
    first = process_log.path() is None
    compilation_cache(cfg.compile)
    me = initialize(cfg.distributed)
    if me.multi and first:
        check_same_config(cfg, me)  # one line on every process, before anything is written
    section, key = setting.split(".")
    run_dir = getattr(getattr(cfg, section), key)
    rundir.prepare(run_dir, setting)  # one line, before anything is written there
    path = setup_process_log(run_dir)
    if me.multi and first:
        import jax

        log.info("process %d of %d joined the run (%s, coordinator %s): %d of %d devices are "
                 "local; a process that stops for %ds stops the run; log: %s", me.index,
                 me.count, me.source, me.coordinator, jax.local_device_count(),
                 jax.device_count(), me.heartbeat_timeout, path)
        _no_compilation_cache_on_cpu()
    return me


def check_same_config(cfg: Config, me: ProcessInfo) -> None:
    """Stop every process in one line unless all of them resolved the same config
    (:mod:`jaxlm.runtime.agreement`, through the coordinator's key-value store)."""
    from jax._src import distributed as jax_distributed  # the client handle is not public

    client = jax_distributed.global_state.client
    if client is None:
        return
    agreement.check(cfg.model_dump(mode="json"), client, me.index, me.count,
                    cfg.distributed.initialization_timeout)


def compilation_cache(c: Any) -> None:
    """Turn JAX's persistent compilation cache on (``compile.cache``), in
    ``compile.cache_dir``, else ``$JAX_COMPILATION_CACHE_DIR``, else the user's cache
    directory; steps that compile in under a second are not worth a file."""
    import jax

    if not c.cache:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    where = c.cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxlm", "xla")
    if jax.config.jax_compilation_cache_dir != where:
        jax.config.update("jax_compilation_cache_dir", where)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _no_compilation_cache_on_cpu() -> None:
    """Turn JAX's persistent compilation cache off in a multi-process CPU run.

    Measured with jax 0.12.1 (2 processes x 4 CPU devices, gloo): a second launch that finds
    the executables of the first in a shared ``JAX_COMPILATION_CACHE_DIR`` hangs in the first
    train step's collective on every process, for ever (heartbeats keep arriving, so nothing
    stops it); jax 0.10.2 was unaffected. CPU processes are a rehearsal of a pod, where
    compile time matters less than a run that cannot hang, so the cache is off there.
    """
    import jax

    if jax.default_backend() != "cpu" or not jax.config.jax_compilation_cache_dir:
        return
    if not jax.config.jax_enable_compilation_cache:
        return
    jax.config.update("jax_enable_compilation_cache", False)
    log.warning("JAX's persistent compilation cache (%s) is off in this multi-process CPU run: "
                "reusing its executables can hang the processes' collectives",
                jax.config.jax_compilation_cache_dir)
