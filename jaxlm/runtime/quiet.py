"""Library noise at failure points that jaxlm reports itself, in one line.

Each filter here drops one known kind of message, and only that, so the user sees jaxlm's
one ``jaxlm: error:`` line instead of a pile of tracebacks and log records saying the same:

* :class:`OrbaxSaveFailures`: Orbax's ERROR records (with tracebacks) for a save that failed
  in a background thread, e.g. on a full disk; the
  :class:`~jaxlm.checkpoint.checkpointer.Checkpointer` re-raises the failure as a
  ``TrainingError`` and puts these records in the process log.
* :func:`quiet_orbax_leftovers`: after such a failure, tensorstore's write callbacks that
  arrive once Orbax closed its event loop (``RuntimeError: Event loop is closed``, once per
  array), asyncio's "Task/Future exception was never retrieved" for Orbax's write tasks and
  tensorstore's write futures (at exit)
  and Python's "coroutine ... was never awaited" for Orbax's write fragments never started.
* :func:`quiet_writer_thread`: the traceback of TensorBoard's event-writer thread when a
  write fails; the same error is raised again in the training thread, where it is reported.
* :func:`quiet_hub_retries`: huggingface_hub's retry warnings while a hub dataset is looked
  up (22 lines when the hub cannot be reached; the caller reports the outcome).
* :data:`JSON_ERRORS`: the `datasets` JSON reader's ERROR record for a malformed file (the
  caller names the file and line instead); the file it names is kept for that.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

# Orbax's words for a failed save: "... raised an exception", "Failed to run N Handler Commit
# operations ...", "Save Finalize thread (save_finalize) failed."
_ORBAX_FAILURE_SIGNS = ("raised an exception", "Failed", "failed")


class OrbaxSaveFailures(logging.Filter):
    """While attached to the ``absl`` logger: Orbax's ERROR records go to ``sink`` instead of
    the terminal. Use as a context manager around the life of a checkpoint manager."""

    def __init__(self, sink: Callable[[str], Any]) -> None:
        super().__init__()
        self.sink = sink

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "orbax" not in record.pathname:
            return True
        text = record.getMessage()
        if not any(sign in text for sign in _ORBAX_FAILURE_SIGNS):
            return True
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.sink(f"orbax: {text}\n")
        return False

    def __enter__(self) -> OrbaxSaveFailures:
        logging.getLogger("absl").addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("absl").removeFilter(self)


class _OrbaxLeftoverTasks(logging.Filter):
    """On the ``asyncio`` logger: "Task (or _GatheringFuture) exception was never retrieved"
    for Orbax's write tasks, logged when they are garbage-collected (at exit) after a failed
    save whose error jaxlm already reported; they go to ``sink``."""

    def __init__(self) -> None:
        super().__init__()
        self.sink: Callable[[str], Any] = lambda text: None

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "exception was never retrieved" not in text or not _from_orbax(record, text):
            return True
        self.sink(f"asyncio: {text.splitlines()[-1][:300]}\n")
        return False


def _from_orbax(record: logging.LogRecord, text: str) -> bool:
    """Whether the record's exception was raised in Orbax's code, or by tensorstore writing
    into an Orbax step not yet committed (its path has Orbax's temporary suffix)."""
    if ".orbax-checkpoint-tmp" in text:
        return True
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
        if "/orbax/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


_LEFTOVER_TASKS = _OrbaxLeftoverTasks()
# Orbax's serialization coroutine per array fragment (orbax/checkpoint/_src/serialization).
_UNSTARTED_WRITES = r"coroutine 'async_serialize_from_host\.<locals>\.write_fragment' was never"


def quiet_orbax_leftovers(sink: Callable[[str], Any]) -> None:
    """Drop the late reports of a failed Orbax save: tensorstore callbacks after Orbax's event
    loop closed (``Event loop is closed``), Orbax's write tasks whose exception was never
    retrieved (these go to ``sink``) and the ``RuntimeWarning`` for Orbax's fragment writes
    that never started (garbage-collected at exit, after jaxlm's error line). Idempotent."""
    _LEFTOVER_TASKS.sink = sink
    warnings.filterwarnings("ignore", _UNSTARTED_WRITES, RuntimeWarning)
    logger = logging.getLogger("asyncio")
    if _LEFTOVER_TASKS not in logger.filters:
        logger.addFilter(_LEFTOVER_TASKS)
    quiet_late_callbacks()


def _is_late_callback(unraisable: Any) -> bool:
    err, tb = unraisable.exc_value, unraisable.exc_traceback
    if not isinstance(err, RuntimeError) or str(err) != "Event loop is closed":
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"


def quiet_late_callbacks() -> None:
    """Drop ``RuntimeError: Event loop is closed`` raised by asyncio's ``_check_closed`` in an
    unraisable callback (tensorstore's, after Orbax's loop ended); idempotent."""
    previous = sys.unraisablehook
    if getattr(previous, "_jaxlm", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_late_callback(unraisable):
            previous(unraisable)

    hook._jaxlm = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def quiet_writer_thread(thread_type: type) -> None:
    """Drop the traceback of a ``thread_type`` thread that died of an OSError (its owner
    raises the same error again where it is reported); idempotent."""
    previous = threading.excepthook
    if getattr(previous, "_jaxlm", False):
        return

    def hook(args: Any) -> None:
        if not (isinstance(args.thread, thread_type) and issubclass(args.exc_type, OSError)):
            previous(args)

    hook._jaxlm = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class DropMatching(logging.Filter):
    """Drops the records whose message contains one of ``signs``."""

    def __init__(self, signs: tuple[str, ...]) -> None:
        super().__init__()
        self.signs = signs

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(sign in text for sign in self.signs)


@contextlib.contextmanager
def quiet_hub_retries() -> Iterator[None]:
    """Within the block, huggingface_hub's "... thrown while requesting ..." and "Retrying
    in Ns" warnings are dropped."""
    logger = logging.getLogger("huggingface_hub.utils._http")
    drop = DropMatching(("thrown while requesting", "Retrying in"))
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _JsonErrors(logging.Filter):
    """Drops the `datasets` JSON reader's "Failed to load JSON from file '...'" records,
    remembering the last file named (the reader's exception does not name it)."""

    LOGGER = "datasets.packaged_modules.json.json"

    def __init__(self) -> None:
        super().__init__()
        self.last_file: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith("Failed to load JSON from file '"):
            return True
        self.last_file = text.split("'", 2)[1]
        return False

    def install(self) -> None:
        logger = logging.getLogger(self.LOGGER)
        if self not in logger.filters:
            logger.addFilter(self)


JSON_ERRORS = _JsonErrors()
