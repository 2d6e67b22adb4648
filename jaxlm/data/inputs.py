"""Texts given to a command one per line (``--file`` or stdin), read as strict UTF-8.

``jaxlm predict`` and ``jaxlm generate`` read their inputs here, so input that is not text
(a binary file, or bytes piped on stdin) is refused in one line naming where it came from,
as ``jaxlm train`` refuses such a data file.
"""

from __future__ import annotations

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
