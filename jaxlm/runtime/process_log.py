"""Per-process log files: ``RUN_DIR/logs/process_N.log`` (or ``$JAXLM_LOG_DIR``).

In a multi-process run the file is a transcript of everything the process writes to stdout
and stderr, at the file-descriptor level, so JAX/XLA runtime messages and fatal errors are in
it too: both streams go through a tee child (:mod:`jaxlm.runtime.tee`), which also keeps C++ crash
reports off the terminal in favour of one ``jaxlm: error:`` line. In a one-process run the
file holds the ``jaxlm`` logger's records. :func:`log_only` puts details (a traceback) in the
file without showing them on the terminal.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from jaxlm.runtime import tee

ENV_LOG_DIR = "JAXLM_LOG_DIR"

log = logging.getLogger("jaxlm")
_log_path: Path | None = None
_file_handler: logging.Handler | None = None
_tees: list[subprocess.Popen] = []


def path() -> Path | None:
    """This process's log file, once :func:`start` ran."""
    return _log_path


def log_dir(run_dir: str | Path) -> Path:
    """Where the per-process logs go: ``$JAXLM_LOG_DIR`` or ``RUN_DIR/logs`` (for a remote
    run directory such as ``gs://...``, ``./logs``)."""
    if os.environ.get(ENV_LOG_DIR):
        return Path(os.environ[ENV_LOG_DIR])
    if "://" in str(run_dir):
        return Path("logs")
    return Path(run_dir) / "logs"


def flush() -> None:
    """Flush Python's stdout and stderr (ignoring streams already closed)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def log_only(text: str) -> bool:
    """Append ``text`` to this process's log file without showing it on the terminal.
    False when there is no log file (not started) to write to."""
    if _log_path is None:
        return False
    flush()
    try:
        with open(_log_path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        return False
    return True


def _tee_fd(fd: int, log_path: Path, who: tuple[int, int] | None = None) -> subprocess.Popen:
    """Route file descriptor ``fd`` through a tee child into ``log_path`` and where it went;
    ``who`` (process index, count) makes the tee condense C++ crash reports."""
    original = os.dup(fd)
    args = [] if who is None else [str(who[0]), str(who[1])]
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", tee.__file__, str(log_path), *args],
            stdin=subprocess.PIPE, stdout=original, stderr=subprocess.DEVNULL,
            start_new_session=True)
    finally:
        os.close(original)
    assert child.stdin is not None
    os.dup2(child.stdin.fileno(), fd)
    child.stdin.close()
    return child


def start(run_dir: str | Path, index: int, count: int, capture: bool) -> Path:
    """Start ``process_<index>.log``; returns its path.

    ``capture`` sends the process's whole stdout and stderr there too, at the file-descriptor
    level; otherwise the file gets the ``jaxlm`` logger's records. Called again with the same
    directory it does nothing.
    """
    global _log_path, _file_handler
    target = log_dir(run_dir) / f"process_{index}.log"
    if _log_path is not None and (_tees or target == _log_path):
        return _log_path  # the transcript of this process already runs elsewhere
    target.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(f"%(asctime)s jaxlm[{index}] %(levelname)s %(message)s",
                            "%Y-%m-%d %H:%M:%S")
    log.setLevel(logging.INFO)
    if _file_handler is not None:
        log.removeHandler(_file_handler)
        _file_handler.close()
        _file_handler = None
    if capture:
        flush()
        _tees.append(_tee_fd(1, target))
        _tees.append(_tee_fd(2, target, (index, count)))
        for stream in (sys.stdout, sys.stderr):  # a line in the log as soon as it is printed
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(line_buffering=True)
        if not any(getattr(h, "_jaxlm", False) for h in log.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(fmt)
            handler._jaxlm = True  # type: ignore[attr-defined]
            log.addHandler(handler)
            log.propagate = False
    else:
        _file_handler = logging.FileHandler(target, encoding="utf-8")
        _file_handler.setFormatter(fmt)
        log.addHandler(_file_handler)
    _log_path = target
    return target


def release() -> Path | None:
    """Stop writing this process's log file, so that it can be removed; returns its path.

    Used when a run that failed at start-up removes the run directory it had just created
    (:func:`jaxlm.runtime.rundir.cleanup`). In a one-process run the file handler is closed
    and the log forgotten (a later :func:`start` begins a new one). In a multi-process run
    the tees keep the transcript going: the file may still be unlinked, its last lines are
    then simply not kept.
    """
    global _log_path, _file_handler
    target = _log_path
    if _file_handler is not None:
        log.removeHandler(_file_handler)
        _file_handler.close()
        _file_handler = None
        _log_path = None
    return target
