"""The run directory: created and checked writable before a run writes anything, and a
failed write anywhere in it told in one line.

A run directory that cannot be created or written — a read-only filesystem, a path under a
regular file, no permission — is a bad setting, found at start-up: :class:`RunDirError`
(exit code 2). A write that fails later for want of space (a full disk, a quota) is a runtime
fault: a :class:`~jaxlm.errors.TrainingError` (exit code 1) from :func:`write_error`. Both
name the errno text, e.g. ``[Errno 28] No space left on device``, also when the error comes
from tensorstore (Orbax's array writer), which reports it as ``[os_error_code='28']``.

A run that fails on bad settings or input after :func:`prepare` created its directory (a data
path that matches nothing, a sample prompt longer than the context) would leave an empty run
directory behind, which the next attempt then takes for an earlier run's. :func:`cleanup`
removes such a directory again, but only one that this process created and that holds nothing
but what a run writes at start-up: never a directory that existed before, nor one with a
checkpoint or a metrics row.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from jaxlm.errors import TrainingError, UserError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# Run directory → the topmost directory that prepare() created for it (its parents included).
_created: dict[Path, Path] = {}
# What a run writes before its first step, and so may be removed with a run directory it
# just created: its config and (empty) metrics files; checkpoints/ and profile/ only if empty.
_START_FILES = ("config.json", "metrics.jsonl")


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
        top = _first_missing(path)
        path.mkdir(parents=True, exist_ok=True)
        if top is not None:
            _created.setdefault(path.absolute(), top.absolute())
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


def _first_missing(path: Path) -> Path | None:
    """The topmost part of ``path`` that does not exist yet (None: all of it exists)."""
    missing = None
    for part in (path, *path.parents):
        if part.exists():
            break
        missing = part
    return missing


def _disposable(run_dir: Path, own_log: Path | None) -> list[Path] | None:
    """The files to remove with ``run_dir``, if it holds nothing but what a run writes at
    start-up (else None): this process's log, ``config.json``, an empty ``metrics.jsonl``,
    TensorBoard event files when that metrics file is empty (no step was logged), and empty
    directories. Another process's log, a checkpoint or anything unknown keeps it all."""
    jsonl = run_dir / "metrics.jsonl"
    no_rows = jsonl.is_file() and jsonl.stat().st_size == 0
    files = []
    for p in run_dir.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            continue
        rel = p.relative_to(run_dir)
        ok = (p == own_log
              or (str(rel) in _START_FILES and (rel.name != "metrics.jsonl" or no_rows))
              or (rel.parts[0] == "tensorboard" and rel.name.startswith("events.") and no_rows))
        if not ok or not p.is_file():
            return None
        files.append(p)
    return files


def cleanup(remove: bool) -> list[Path]:
    """After a command: with ``remove`` (it failed on bad settings or input), remove each
    run directory this process created that holds only start-up files (see
    :func:`_disposable`), with the parents created for it; then forget them all, so a later
    command in the same process (a notebook, a test) never removes a directory it did not
    create. Returns the directories removed. A removal that fails leaves the rest in place."""
    from jaxlm.runtime import process_log

    created = dict(_created)
    _created.clear()
    removed: list[Path] = []
    if not remove:
        return removed
    own_log = process_log.path()
    own_log = own_log.absolute() if own_log is not None else None
    for run_dir, top in created.items():
        files = _disposable(run_dir, own_log) if run_dir.is_dir() else None
        if files is None:
            continue
        if own_log in files:
            process_log.release()  # close it before it is removed
        try:
            for f in files:
                f.unlink()
            dirs = sorted((d for d in run_dir.rglob("*") if d.is_dir()),
                          key=lambda d: len(d.parts), reverse=True)
            for d in [*dirs, run_dir]:
                d.rmdir()  # only ever an empty directory
            for parent in run_dir.parents:  # the parents created for it, up to the top one
                if parent != top and top not in parent.parents:
                    break
                parent.rmdir()
        except OSError:
            continue
        removed.append(run_dir)
    return removed
