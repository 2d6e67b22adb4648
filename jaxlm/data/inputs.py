"""Texts given to a command one per line (``--file`` or stdin), read as strict UTF-8.

``jaxlm predict`` and ``jaxlm generate`` read their inputs here, so input that is not text
(a binary file, or bytes piped on stdin) is refused in one line naming where it came from,
as ``jaxlm train`` refuses such a data file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jaxlm.errors import UserError


def read_lines(file: str | None, what: str) -> list[str]:
    """The non-blank lines of ``file`` (None or ``-``: stdin); ``what`` names one line in
    messages ("text", "prompt"). Raises :class:`UserError` for unreadable or non-UTF-8 input
    and for input with no lines."""
    where = "stdin" if file in (None, "-") else f"--file {file}"
    if file in (None, "-"):
        if sys.stdin.isatty():
            raise UserError(f"give a {what} as an argument, --file FILE (one {what} per line), "
                            f"or pipe them on stdin")
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(file).read_bytes()
        except OSError as e:
            raise UserError(f"cannot read {where}: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{where} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start}); give one {what} per line of UTF-8 text") from None
    if "\x00" in text:
        raise UserError(f"{where} is not text (it holds NUL bytes); give one {what} per line "
                        "of UTF-8 text")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"no {what}s in {where}")
    return lines


def read_jsonl_column(file: str | None, column: str, what: str) -> list[str]:
    """``column`` of every JSON object in ``file`` (None or ``-``: stdin), one object per
    line: multi-line texts (emails) need no flattening. A line that is not a JSON object
    with a string ``column`` is one error naming the line."""
    where = "stdin" if file in (None, "-") else f"--file {file}"
    out = []
    for i, line in enumerate(read_lines(file, f"JSON object with a {column!r} {what}"), 1):
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise UserError(f"{where}, JSON line {i}: not JSON ({e.msg}); give one JSON object "
                            f"per line with a {column!r} field") from None
        value = obj.get(column) if isinstance(obj, dict) else None
        if not isinstance(value, str):
            keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
            raise UserError(f"{where}, JSON line {i}: no string {column!r} field (it has "
                            f"{keys}); the run reads its {what} from {column!r}")
        out.append(value)
    return out
