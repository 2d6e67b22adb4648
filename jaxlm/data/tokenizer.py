"""Tokenizers for jaxlm, built on Hugging Face `tokenizers`.

The package ships a default byte-level BPE tokenizer (``jaxlm/assets/tokenizer.json``,
4096 tokens, trained on the embedded Shakespeare corpus) and that corpus itself
(``jaxlm/assets/corpus/{train,valid}.jsonl.gz``), so a fresh clone runs offline.

Special tokens of tokenizers trained here, in id order::

    <|pad|>        0   padding
    <|endoftext|>  1   end of document; also used as beginning of document
    <|mask|>       2   masked-LM corruption

No special token is added by ``encode``: the data pipeline places ``<|endoftext|>``
itself. Every byte is in the vocabulary, so there is no unknown token and decoding is
exact.

    >>> tok = load_tokenizer("default")
    >>> ids = tok.encode("To be, or not to be").ids
    >>> tok.decode(ids)
    'To be, or not to be'
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from jaxlm.errors import UserError
from jaxlm.hf.tokenizer import hf_tokenizer

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "MASK_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "SpecialIds",
    "TokenizerError",
    "default_corpus_files",
    "iter_texts",
    "load_tokenizer",
    "special_ids",
    "train_tokenizer",
]

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = EOS_TOKEN
MASK_TOKEN = "<|mask|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, EOS_TOKEN, MASK_TOKEN)  # ids 0, 1, 2

TOKENIZER_FILE = "tokenizer.json"
TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")

# Names looked up, in order, to find the special tokens of a foreign tokenizer.
_EOS_NAMES = (EOS_TOKEN, "</s>", "[SEP]")
_PAD_NAMES = (PAD_TOKEN, "<pad>", "[PAD]")
_MASK_NAMES = (MASK_TOKEN, "<mask>", "[MASK]")

# .txt files reach the trainer in ~64 KB blocks of whole lines; texts go in batches.
_TXT_CHUNK_CHARS = 1 << 16
_BATCH = 256


class TokenizerError(UserError):
    """A tokenizer or a training file cannot be found, read or understood."""


@dataclass(frozen=True)
class SpecialIds:
    """Ids of a tokenizer's special tokens; ``None`` where the tokenizer has none."""

    pad: int | None
    eos: int | None
    mask: int | None

    @property
    def bos(self) -> int | None:
        """Beginning-of-document id: jaxlm uses the end-of-text token for both."""
        return self.eos


def _assets() -> Traversable:
    return resources.files("jaxlm") / "assets"


def default_corpus_files() -> dict[str, str]:
    """Paths of the embedded default corpus: ``{"train": ..., "valid": ...}``.

    Each is a gzipped JSON Lines file with one ``{"text": ...}`` document per line
    (public-domain Shakespeare; see ``jaxlm/assets/corpus/PROVENANCE.md``).
    """
    corpus = _assets() / "corpus"
    return {split: str(corpus / f"{split}.jsonl.gz") for split in ("train", "valid")}


def _kind(path: str) -> str:
    name = path.lower()
    for suffix in TEXT_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise TokenizerError(
        f"cannot read training file {path!r}: "
        f"expected one of {', '.join(TEXT_SUFFIXES)}"
    )


def _open_text(path: str) -> io.TextIOBase:
    if path.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_texts(files: list[str]) -> Iterator[str]:
    """Stream the texts of ``files`` one by one, never holding a whole file in memory.

    ``.jsonl``/``.jsonl.gz``: the ``"text"`` field of each line (blank lines skipped).
    ``.txt``/``.txt.gz``: blocks of about 64 KB of whole lines, newlines kept.
    """
    for path in files:
        kind = _kind(str(path))
        with _open_text(str(path)) as f:
            if kind.startswith(".jsonl"):
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise TokenizerError(
                            f"{path}:{lineno}: expected a JSON object with a 'text' "
                            f"field ({e})"
                        ) from None
                    if not isinstance(text, str):
                        raise TokenizerError(f"{path}:{lineno}: 'text' is not a string")
                    yield text
            else:
                block: list[str] = []
                size = 0
                for line in f:
                    block.append(line)
                    size += len(line)
                    if size >= _TXT_CHUNK_CHARS:
                        yield "".join(block)
                        block, size = [], 0
                if block:
                    yield "".join(block)


def _batched(texts: Iterator[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def new_bpe_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer (no normaliser, so decoding is exact)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_tokenizer(
    files: list[str],
    vocab_size: int,
    out_path: str,
    min_frequency: int = 2,
    *,
    show_progress: bool = True,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``files`` and save it to ``out_path``.

    Args:
      files: ``.txt``, ``.txt.gz``, ``.jsonl`` or ``.jsonl.gz`` files (JSON Lines: the
        ``"text"`` field), streamed rather than loaded whole.
      vocab_size: size of the final vocabulary, counting the 3 special tokens and the
        256 byte tokens, so at least 259 (a smaller one is a :class:`TokenizerError`). A corpus
        too small to learn that many merges gives a smaller vocabulary.
      out_path: where to write ``tokenizer.json`` (an existing directory means
        ``<dir>/tokenizer.json``).
      min_frequency: a pair must occur this often to be merged.
      show_progress: show the trainer's progress bar.

    Returns:
      The trained tokenizer, with ``<|pad|>``=0, ``<|endoftext|>``=1, ``<|mask|>``=2.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
        raise TokenizerError(
            f"vocab_size={vocab_size} (--vocab-size) is too small: a byte-level BPE vocabulary "
            f"holds at least {len(SPECIAL_TOKENS) + len(alphabet)} tokens (3 special + 256 bytes); "
            f"give {len(SPECIAL_TOKENS) + len(alphabet)} or more"
        )
    files = [os.fspath(f) for f in files]
    if not files:
        raise TokenizerError("train_tokenizer needs at least one training file")
    for path in files:
        _kind(path)
        if not os.path.isfile(path):
            raise TokenizerError(f"training file {path!r} does not exist")
    if not any(text.strip() for text in iter_texts(files)):  # stops at the first text
        raise TokenizerError(
            f"the training files hold no text ({', '.join(files)}): there is nothing to learn "
            "merges from; give files with text in them"
        )

    tok = new_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
    )
    tok.train_from_iterator(_batched(iter_texts(files), _BATCH), trainer=trainer)
    if [tok.token_to_id(name) for name in SPECIAL_TOKENS] != list(
        range(len(SPECIAL_TOKENS))
    ):
        raise RuntimeError(
            f"special tokens did not get ids 0..2: {tok.get_added_tokens_decoder()}"
        )

    out = Path(out_path)
    if out.is_dir():
        out = out / TOKENIZER_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return tok


def load_tokenizer(spec: str) -> Tokenizer:
    """Load a tokenizer.

    Args:
      spec: ``"default"`` (the embedded ``jaxlm/assets/tokenizer.json``), the path of a
        ``tokenizer.json`` file, or a directory containing ``tokenizer.json`` (or a Hugging
        Face model's ``vocab.txt`` / ``vocab.json`` + ``merges.txt``).

    Raises:
      TokenizerError: ``spec`` is none of these, or the file is not a valid tokenizer.
    """
    if spec == "default":
        resource = _assets() / TOKENIZER_FILE
        try:
            return Tokenizer.from_str(resource.read_text(encoding="utf-8"))
        except Exception as e:  # missing or corrupt package data
            raise TokenizerError(
                f"embedded default tokenizer {resource} cannot be loaded: {e}"
            ) from e
    path = Path(os.path.expanduser(os.fspath(spec)))
    if path.is_dir() and not (path / TOKENIZER_FILE).is_file():

        tok = hf_tokenizer(path)
        if tok is not None:
            return tok
    if path.is_dir():
        path = path / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(
                f"tokenizer directory {str(spec)!r} has no {TOKENIZER_FILE}; expected "
                f"'default', a tokenizer.json file, or a directory containing one"
            )
    elif not path.is_file():
        raise TokenizerError(
            f"tokenizer {str(spec)!r} not found; expected 'default', a tokenizer.json "
            f"file, or a directory containing one"
        )
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TokenizerError(
            f"{str(path)!r} is not a valid tokenizer.json: {msg}"
        ) from e
    tok.no_padding()  # jaxlm frames, truncates and pads itself (HF files may set both)
    tok.no_truncation()
    return tok


def special_ids(tok: Tokenizer) -> SpecialIds:
    """Find the pad, end-of-text and mask ids of ``tok``.

    jaxlm's own names come first; foreign tokenizers are searched for the common names
    (``</s>``/``[SEP]`` for eos, ``<pad>``/``[PAD]`` for pad, ``<mask>``/``[MASK]`` for
    mask).
    """

    def find(names: tuple[str, ...]) -> int | None:
        for name in names:
            i = tok.token_to_id(name)
            if i is not None:
                return i
        return None

    return SpecialIds(
        pad=find(_PAD_NAMES), eos=find(_EOS_NAMES), mask=find(_MASK_NAMES)
    )
