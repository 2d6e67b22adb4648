"""Plain-text files as a stream of bounded *pieces*: never a whole document in memory.

A ``.txt`` source is one document per file, per blank-line block or per line
(``sample_by``). Any of these can be huge (a book, a dump, a file without blank lines), so
files are read in blocks and every document is cut into pieces of at most
:data:`PIECE_CHARS` characters; the pipeline tokenizes piece by piece and the packer joins
them back into one document (one token of context carried across each cut).

Where a piece ends (:func:`find_cut`) depends only on the text, so reading is deterministic
and a resumed stream sees the very same pieces. A cut is placed just before a single space
or newline that sits between two non-space characters, preferring newlines, in the second
half of the allowed length: there byte-level BPE pre-tokenizers (GPT-2's regex) start a new
pre-token anyway, so cutting changes no token. Text with no such place (random symbols, long
runs of spaces) is cut hard at the limit.

Files that are not text at all (binary data given a ``.txt`` name) are refused up front by
:func:`check_text`: more than :data:`NON_TEXT_SHARE` of the first :data:`SNIFF_CHARS`
characters being U+FFFD (bytes that are not UTF-8) or control characters.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
from collections.abc import Iterable, Iterator

from jaxlm.data.errors import DataError

PIECE_CHARS = 1 << 16  # longest piece of a document handed to the tokenizer (characters)
SNIFF_CHARS = 1 << 16  # characters of each text file checked for being text
NON_TEXT_SHARE = 0.25  # refuse a file with more than this share of U+FFFD / control chars
MORE = "more"  # example key of text sources: the document goes on in the next example

COMPRESSION = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# C0 controls but tab, newlines, vertical tab and form feed; DEL; C1 controls; U+FFFD.
_NON_TEXT = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")


class NotTextError(DataError):
    """A file given as text is binary (or in an encoding that is far from UTF-8)."""


def open_text(path: str) -> io.TextIOWrapper:
    """A text file (optionally .gz/.bz2/.xz), UTF-8 with U+FFFD for bad bytes, ``\\n`` lines."""
    suffix = os.path.splitext(path.lower())[1]
    opener = COMPRESSION.get(suffix, open)
    return io.TextIOWrapper(opener(path, "rb"), encoding="utf-8", errors="replace", newline=None)


def check_text(path: str, sample: str) -> None:
    """Raise :class:`NotTextError` (one line naming ``path``) if ``sample`` is not text."""
    if not sample:
        return
    bad = len(_NON_TEXT.findall(sample))
    if bad > NON_TEXT_SHARE * len(sample):
        raise NotTextError(
            f"data file {path!r} does not look like text: {bad / len(sample):.0%} of its first "
            f"{len(sample):,} characters are bytes that are not UTF-8 or control characters; "
            "convert it to UTF-8 text or remove it from the source")


def find_cut(text: str, start: int, size: int) -> int:
    """Where the piece starting at ``start`` ends: an index in ``(start, start + size]``.

    Needs ``len(text) > start + size`` (there is more text after the piece). Prefers the last
    newline, then the last space, in ``[start + size // 2, start + size)`` that has a
    non-space character on both sides; else cuts at ``start + size``.
    """
    lo, hi = start + max(1, size // 2), start + size  # candidates i in [lo, hi)
    for sep in ("\n", " "):
        i = text.rfind(sep, lo, hi)
        while i >= lo:
            if not text[i - 1].isspace() and not text[i + 1].isspace():
                return i
            i = text.rfind(sep, lo, i)
    return hi


def cut_pieces(chunks: Iterable[tuple[str, bool]], size: int = PIECE_CHARS,
               strip_newlines: bool = False) -> Iterator[tuple[str, bool]]:
    """Documents given as chunks → ``(piece, more)``; ``more`` = the document goes on.

    ``chunks`` are ``(text, ends_document)`` of at most ``size`` characters each. A document
    is cut exactly as :func:`find_cut` would cut it whole, so pieces do not depend on how the
    file was read. ``strip_newlines`` drops trailing newlines of each document (lines and
    blank-line blocks).
    """
    buf = ""  # at most 2 * size characters
    for text, ends in chunks:
        buf = buf + text if buf else text
        while len(buf) > size:
            i = find_cut(buf, 0, size)
            yield buf[:i], True
            buf = buf[i:]
        if ends:
            yield (buf.rstrip("\n") if strip_newlines else buf), False
            buf = ""


def _document_chunks(f: io.TextIOBase, size: int) -> Iterator[tuple[str, bool]]:
    while block := f.read(size):
        yield block, False
    yield "", True


def _line_chunks(f: io.TextIOBase, size: int) -> Iterator[tuple[str, bool]]:
    ended = True
    while line := f.readline(size):
        ended = line.endswith("\n")
        yield line, ended
    if not ended:  # a last line without a newline
        yield "", True


def _paragraph_chunks(f: io.TextIOBase, size: int) -> Iterator[tuple[str, bool]]:
    started = False
    while line := f.readline(size):
        whole = line.endswith("\n") or len(line) < size  # not the start of an overlong line
        if whole and not line.strip():  # a blank line ends the block
            if started:
                yield "", True
                started = False
            continue
        started = True
        yield line, False
    if started:
        yield "", True


_CHUNKS = {"document": _document_chunks, "line": _line_chunks, "paragraph": _paragraph_chunks}


def text_examples(files: list[str], sample_by: str, piece_chars: int = PIECE_CHARS
                  ) -> Iterator[dict[str, object]]:
    """Examples ``{"text": piece, MORE: bool}`` of text files, in order (see the module doc).

    Each file is checked with :func:`check_text` when it is opened.
    """
    for path in files:
        with open_text(path) as f:
            check_text(path, f.read(SNIFF_CHARS))
            f.seek(0)
            chunks = _CHUNKS[sample_by](f, piece_chars)
            for piece, more in cut_pieces(chunks, piece_chars, sample_by != "document"):
                yield {"text": piece, MORE: more}
