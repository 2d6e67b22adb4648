"""Warnings as one line each, once per run: ``warning: <message> (<Category>)``.

Python shows a warning as two lines, ``path/to/file.py:123: Category: message`` and the
source line that raised it, which point into jaxlm's (or pydantic's) code rather than at the
setting or the data the message is about. The ``jaxlm`` command installs :func:`show` in
their place (:func:`install`, from :func:`jaxlm.cli.main`, for every verb):

* one line on stderr, above a progress bar, in the form of jaxlm's other messages; the
  category stays in it, so ``-W ignore::DataWarning`` / ``PYTHONWARNINGS`` still says what
  to silence;
* each distinct warning (category and message) once per process. Python's own "once per
  location" forgets what it showed whenever any library enters ``warnings.catch_warnings``,
  so a source opened again for every evaluation warned again at each;
* in a multi-process run, only process 0 shows it: the others write it to their own log
  (``RUN_DIR/logs/process_N.log``), so a warning that every process raises (a setting, the
  file layout of the data) is on the terminal once per run, not once per process. In a
  one-process run the line goes to the process log as well.
"""

from __future__ import annotations

import re
import sys
import time
import warnings
from typing import Any, TextIO

_seen: set[tuple[type, str]] = set()
_previous: Any = None


def format_line(message: Warning | str, category: type[Warning]) -> str:
    """The one line shown for a warning: its message with line breaks folded to spaces,
    and its category."""
    text = re.sub(r"\s*\n\s*", " ", str(message)).strip()
    return f"warning: {text} ({category.__name__})"


def _process() -> tuple[int, bool]:
    """(this process's index, whether the run has several processes); one process until
    :mod:`jaxlm.runtime.distributed` has started."""
    dist = sys.modules.get("jaxlm.runtime.distributed")
    if dist is None:
        return 0, False
    me = dist.info()
    return me.index, me.multi


def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
         file: TextIO | None = None, line: str | None = None) -> None:
    """:func:`warnings.showwarning`'s replacement (same signature): see the module
    docstring. ``filename``, ``lineno`` and ``line`` are not shown."""
    text = format_line(message, category)
    key = (category, text)
    if key in _seen:
        return
    _seen.add(key)
    from jaxlm.runtime import process_log

    index, multi = _process()
    if multi and index != 0 and process_log.path() is not None:  # its own log only
        process_log.log_only(f"{time.strftime('%Y-%m-%d %H:%M:%S')} jaxlm[{index}] "
                             f"WARNING {text}\n")
        return
    from tqdm import tqdm

    try:
        tqdm.write(text, file=file or sys.stderr)  # above a progress bar, if one runs
    except (OSError, ValueError):  # stderr closed: nowhere to show it
        pass
    if not multi:  # several processes: stderr is the log already (runtime/process_log.py)
        process_log.log_only(f"{time.strftime('%Y-%m-%d %H:%M:%S')} jaxlm[0] WARNING {text}\n")


def install() -> None:
    """Show warnings with :func:`show` from now on (the ``jaxlm`` command's own process;
    a test or notebook keeps Python's, and whatever records warnings there)."""
    global _previous
    if warnings.showwarning is not show:
        _previous = warnings.showwarning
        warnings.showwarning = show


def uninstall() -> None:
    """Python's way of showing warnings again (undoes :func:`install`)."""
    global _previous
    if warnings.showwarning is show and _previous is not None:
        warnings.showwarning, _previous = _previous, None
    _seen.clear()


def active() -> bool:
    """Whether :func:`show` shows warnings now (so a warning need not be logged twice)."""
    return warnings.showwarning is show
