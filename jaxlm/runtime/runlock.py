"""One writer per run directory: ``RUN_DIR/.jaxlm.lock``.

A run (``jaxlm train`` / ``jaxlm finetune``, process 0 of it) creates the lock file
atomically before it writes anything, with its host, pid, command and start time, and
refreshes its modification time every ``HEARTBEAT_S`` seconds. A second run on the same
directory refuses in one line naming the holder. A lock whose holder is gone — its pid is
not alive on this host, or (another host) its heartbeat is older than ``STALE_S`` — is taken
over with a warning. The lock is removed when the run ends, however it ends.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from jaxlm.errors import UserError

LOCK = ".jaxlm.lock"
HEARTBEAT_S = 20.0
STALE_S = 120.0


class RunDirInUse(UserError):
    """Another live run writes to this run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(h: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("started", 0)))
    return (f"`jaxlm {h.get('command', '?')}` on host {h.get('host', '?')} (pid "
            f"{h.get('pid', '?')}, process {h.get('process', 0)}) since {started}")


class RunLock:
    """The lock of one run directory; use as a context manager (see the module docstring)."""

    def __init__(self, run_dir: str | Path, command: str, log: Any = print,
                 enabled: bool = True) -> None:
        self.path = Path(run_dir) / LOCK
        self.command, self.log, self.enabled = command, log, enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._me = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                    "process": 0, "started": time.time()}

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == self._me["host"]:
            return not _alive(int(holder.get("pid", -1)))
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > STALE_S

    def acquire(self) -> RunLock:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self._me).encode()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    holder = {}
                if not self._stale(holder):
                    raise RunDirInUse(
                        f"run directory {self.path.parent} is in use by {_describe(holder)}; "
                        "wait for it to end or use another run directory (a lock left by a "
                        f"dead run is taken over; {self.path} holds it)") from None
                self.log(f"warning: taking over the run directory lock of {_describe(holder)}, "
                         "which is no longer running")
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self._thread = threading.Thread(target=self._beat, daemon=True, name="jaxlm-lock")
            self._thread.start()
            return self
        raise RunDirInUse(f"could not take the lock {self.path}: another run keeps taking it")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        try:
            holder = json.loads(self.path.read_text())
            if holder.get("pid") == self._me["pid"] and holder.get("host") == self._me["host"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
