"""SIGTERM → "save after this step and stop", agreed by every process of a run.

Spot/preemptible TPU and GPU VMs get SIGTERM some seconds before they are taken away. The
training loop asks :meth:`PreemptionWatcher.reached` after every step; when it says yes, the
loop saves a checkpoint synchronously and exits 0, and the same command resumes later.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax


class PreemptionWatcher:
    """Answers "stop and save after this step?" once SIGTERM has arrived.

    One process: a SIGTERM handler sets a flag (the step in progress finishes first, since
    Python runs handlers between bytecodes). Several processes: JAX's preemption service
    (started by ``jax.distributed.initialize``) catches SIGTERM on any of them and
    ``multihost_utils.reached_preemption_sync_point`` turns true at the same step on all, so
    every process saves the same step. Call :meth:`reached` after every step on every process.
    """

    def __init__(self) -> None:
        self.multi = jax.process_count() > 1
        self._flag = False
        self._previous: Any = None
        if not self.multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._flag = True

    def reached(self, step: int) -> bool:
        if not self.multi:
            return self._flag
        from jax.experimental import multihost_utils

        try:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        except RuntimeError:  # the preemption service is disabled
            return False

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
