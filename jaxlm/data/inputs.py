"""Texts given to a command one per line (``--file`` or stdin), read as strict UTF-8.

``jaxlm predict`` and ``jaxlm generate`` read their inputs here, so input that is not text
(a binary file, or bytes piped on stdin) is refused in one line naming where it came from,
as ``jaxlm train`` refuses such a data file. :func:`line_batches` streams: it reads and
checks one batch of lines at a time, so ``predict`` answers as its input arrives and holds
one batch in memory, and it keeps blank lines so that outputs stay line for line.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from typing import BinaryIO

from jaxlm.errors import UserError


def _where(file: str | None) -> str:
    return "stdin" if file in (None, "-") else f"--file {file}"


def _open(file: str | None, what: str) -> BinaryIO:
    if file in (None, "-"):
        if sys.stdin.isatty():
            raise UserError(f"give a {what} as an argument, --file FILE (one {what} per line), "
                            f"or pipe them on stdin")
        return sys.stdin.buffer
    try:
        return open(file, "rb")  # noqa: SIM115 - closed by line_batches
    except OSError as e:
        raise UserError(f"cannot read {_where(file)}: {e.strerror}") from None


def line_batches(file: str | None, what: str, size: int = 1024) -> Iterator[list[str]]:
    """The lines of ``file`` (None or ``-``: stdin), ``size`` at a time, blank ones included
    (``\\r\\n`` endings dropped); ``what`` names one line in messages ("text", "prompt").
    Raises :class:`UserError` for unreadable or non-UTF-8 input, naming the byte offset, and
    for input without a non-blank line."""
    where, stream = _where(file), _open(file, what)
    offset, seen = 0, False
    try:
        while raw := list(itertools.islice(stream, size)):
            data = b"".join(raw)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{where} is not UTF-8 text (byte 0x{data[e.start]:02x} at "
                                f"offset {offset + e.start}); give one {what} per line of "
                                "UTF-8 text") from None
            if "\x00" in text:
                raise UserError(f"{where} is not text (it holds NUL bytes); give one {what} "
                                "per line of UTF-8 text")
            offset += len(data)
            lines = [line.rstrip("\r") for line in text.split("\n")]
            if text.endswith("\n"):
                lines.pop()  # (the last line's newline ends it; it starts no other)
            seen = seen or any(line.strip() for line in lines)
            yield lines
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if not seen:
        raise UserError(f"no {what}s in {where}")


def read_lines(file: str | None, what: str) -> list[str]:
    """The non-blank lines of ``file`` (None or ``-``: stdin), all read (see
    :func:`line_batches` for the errors)."""
    return [line for batch in line_batches(file, what) for line in batch if line.strip()]


def jsonl_batches(file: str | None, column: str, what: str,
                  size: int = 1024) -> Iterator[list[str]]:
    """``column`` of every JSON object in ``file`` (None or ``-``: stdin), one object per
    line, ``size`` lines at a time (a blank line gives ""): multi-line texts (emails) need no
    flattening. A line that is not a JSON object with a string ``column`` is one error naming
    the line."""
    where, i = _where(file), 0
    for batch in line_batches(file, f"JSON object with a {column!r} {what}", size):
        out = []
        for line in batch:
            i += 1
            if not line.strip():
                out.append("")
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise UserError(f"{where}, JSON line {i}: not JSON ({e.msg}); give one JSON "
                                f"object per line with a {column!r} field") from None
            value = obj.get(column) if isinstance(obj, dict) else None
            if not isinstance(value, str):
                keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
                raise UserError(f"{where}, JSON line {i}: no string {column!r} field (it has "
                                f"{keys}); the run reads its {what} from {column!r}")
            out.append(value)
        yield out
