"""One writer per run directory: ``RUN_DIR/.jaxlm.lock``.

A run (``jaxlm train`` / ``jaxlm finetune``, process 0 of it) creates the lock file
atomically before it writes anything, with its host, pid, command and start time, and
refreshes its modification time every ``HEARTBEAT_S`` seconds. A second run on the same
directory refuses in one line naming the holder (and, for a holder on another host, when its
lock will count as stale). A stale lock — its pid is not alive on this host, it names this
very process but no run in it holds it (a notebook kernel that ran before), or (another host,
e.g. an ended Colab session's run directory on Google Drive) its heartbeat is older than
``STALE_S`` — is taken over with a warning saying so. The lock is removed when the run ends,
however it ends.
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
_HELD: set[Path] = set()  # the locks this process holds now


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

    def _heartbeat_age(self) -> float | None:
        """Seconds since the holder last refreshed the lock (None: the lock is gone)."""
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def _stale(self, holder: dict[str, Any]) -> str | None:
        """Why the holder is gone (a stale lock), or None while it may still run."""
        if holder.get("host") == self._me["host"]:
            pid = int(holder.get("pid", -1))
            if pid == self._me["pid"] and self.path.resolve() not in _HELD:
                # This very process, which holds no lock here now: an earlier run in it (a
                # notebook kernel) did not remove its lock, or a machine of the same name
                # and pid wrote it.
                return "it was left by an earlier run in this process"
            return None if _alive(pid) else (f"that run is no longer running: pid {pid} is gone "
                                             "from this host")
        age = self._heartbeat_age()
        if age is None:
            return "its lock is gone"
        return (f"that run is no longer running: its heartbeat stopped {age:.0f} s ago"
                if age > STALE_S else None)

    def _in_use(self, holder: dict[str, Any]) -> str:
        msg = f"run directory {self.path.parent} is in use by {_describe(holder)}; "
        age = self._heartbeat_age()
        if holder.get("host") == self._me["host"] or age is None:
            return msg + ("wait for it to end or use another run directory (a lock left by a "
                          f"dead run is taken over; {self.path} holds it)")
        # Another host (a run directory on shared storage, e.g. Google Drive from an earlier
        # Colab session): its pid cannot be checked here, only its heartbeat.
        return msg + (f"its lock was refreshed {age:.0f} s ago. If that run is gone (e.g. its "
                      f"Colab session ended), its lock is taken over {STALE_S:.0f} s after the "
                      f"last refresh: run again in {max(1.0, STALE_S - age):.0f} s, or delete "
                      f"{self.path} now")

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
                why = self._stale(holder)
                if why is None:
                    raise RunDirInUse(self._in_use(holder)) from None
                self.log(f"warning: taking over the run directory lock {self.path} of "
                         f"{_describe(holder)}, a stale lock: {why}")
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            _HELD.add(self.path.resolve())
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
        _HELD.discard(self.path.resolve())
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
