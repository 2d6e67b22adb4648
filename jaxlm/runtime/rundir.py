"""The run directory: created and checked writable before a run writes anything, and a
failed write anywhere in it told in one line.

A run directory that cannot be created or written — a read-only filesystem, a path under a
regular file, no permission — is a bad setting, found at start-up: :class:`RunDirError`
(exit code 2). A write that fails later for want of space (a full disk, a quota) is a runtime
fault: a :class:`~jaxlm.errors.TrainingError` (exit code 1) from :func:`write_error`. Both
name the errno text, e.g. ``[Errno 28] No space left on device``, also when the error comes
from tensorstore (Orbax's array writer), which reports it as ``[os_error_code='28']``.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from jaxlm.errors import TrainingError, UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class RunDirError(UserError):
    """The run directory cannot be created or written (a setting to change)."""


def os_errno(err: BaseException) -> int | None:
    """The errno behind ``err``: an OSError's in its exception chain, or tensorstore's
    ``os_error_code`` in its message."""
    e: BaseException | None = err
    while e is not None:
        if isinstance(e, OSError) and e.errno:
            return e.errno
        found = re.search(r"os_error_code='?(\d+)", str(e))
        if found:
            return int(found.group(1))
        e = e.__cause__ or e.__context__
    return None


def reason(err: BaseException) -> str:
    """A one-line cause: ``[Errno N] text: 'file'`` where an errno can be found, else the
    first line of the message."""
    e: BaseException | None = err
    while e is not None:
        if isinstance(e, OSError) and e.strerror:
            return f"[Errno {e.errno}] {e.strerror}" + (f": '{e.filename}'" if e.filename else "")
        e = e.__cause__ or e.__context__
    code = os_errno(err)
    if code is not None:
        return f"[Errno {code}] {os.strerror(code)}"
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:300]


def write_error(what: str, err: BaseException, after: str = "") -> UserError | TrainingError:
    """The one-line error for a failed write of ``what`` (e.g. ``metrics to runs/x/...``):
    no space is a runtime fault (exit 1), anything else (read-only, no permission) a setting
    to fix (exit 2). ``after`` is appended (e.g. what is still intact)."""
    tail = f"; {after}" if after else ""
    if os_errno(err) in NO_SPACE:
        return TrainingError(f"cannot write {what}: {reason(err)}{tail}; free disk space, then "
                             "rerun the same command to resume")
    return RunDirError(f"cannot write {what}: {reason(err)}{tail}; fix the permissions or "
                       "use another run directory")


def prepare(run_dir: str | Path, setting: str = "train.run_dir") -> None:
    """Create ``run_dir`` and check that a file can be written in it (``setting`` is the
    config key it came from, named in the error). Remote paths (``gs://...``) are left alone."""
    if "://" in str(run_dir):
        return
    path = Path(run_dir)
    doing = "created"
    try:
        path.mkdir(parents=True, exist_ok=True)
        doing = "written"
        probe = path / f".jaxlm-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        code = os_errno(e)
        if code in NO_SPACE:
            raise TrainingError(f"the run directory {path} cannot be {doing}: {reason(e)}; "
                                "free disk space and rerun") from None
        hint = (" (a part of that path is a regular file, not a directory)"
                if code in (errno.ENOTDIR, errno.EEXIST) else "")
        raise RunDirError(f"the run directory {path} cannot be {doing}: {reason(e)}{hint}; set "
                          f"{setting} to a writable directory") from None
