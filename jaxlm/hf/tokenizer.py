"""The tokenizer of a Hugging Face model directory, as a `tokenizers.Tokenizer`.

``tokenizer.json`` when there is one; else it is rebuilt with the `tokenizers` library from
the slow tokenizer's files: WordPiece from ``vocab.txt`` (BERT, MiniLM; lower-casing and
accents per ``tokenizer_config.json``) or byte-level BPE from ``vocab.json`` +
``merges.txt`` (GPT-2). Padding and truncation saved in a tokenizer.json are switched off:
jaxlm frames, truncates and pads examples itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from jaxlm.hf.peft import base_of, is_peft_dir
from jaxlm.hf.spec import HFError


def _tokenizer_config(directory: Path) -> dict[str, Any]:
    file = directory / "tokenizer_config.json"
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except ValueError as e:
        raise HFError(f"cannot read {file}: {e}") from None


def _token(c: dict[str, Any], key: str, default: str) -> str:
    """A special token of tokenizer_config.json: a string, or an AddedToken dict."""
    value = c.get(key) or default
    return value.get("content", default) if isinstance(value, dict) else str(value)


def hf_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The directory's tokenizer, or None when it holds no tokenizer files jaxlm can read
    (a PEFT adapter without tokenizer files: its base model's)."""
    d = Path(directory)
    if is_peft_dir(d) and not any((d / f).is_file() for f in ("tokenizer.json", "vocab.txt",
                                                              "vocab.json")):
        d = base_of(d)
    if (d / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    elif (d / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        c = _tokenizer_config(d)
        lower = c.get("do_lower_case", True)
        strip = c.get("strip_accents")  # None: follow lower-casing, as BertTokenizer does
        tok = BertWordPieceTokenizer(
            str(d / "vocab.txt"), lowercase=lower, strip_accents=strip,
            handle_chinese_chars=c.get("tokenize_chinese_chars", True), clean_text=True,
            **{f"{t}_token": _token(c, f"{t}_token", f"[{t.upper()}]")
               for t in ("unk", "sep", "cls", "pad", "mask")})._tokenizer
    elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        from tokenizers.implementations import ByteLevelBPETokenizer

        tok = ByteLevelBPETokenizer(str(d / "vocab.json"), str(d / "merges.txt"))._tokenizer
    else:
        return None
    tok.no_padding()
    tok.no_truncation()
    return tok


def require_tokenizer(directory: str | Path) -> Tokenizer:
    tok = hf_tokenizer(directory)
    if tok is None:
        found = "tokenizer.model (sentencepiece)" if (Path(directory) / "tokenizer.model"
                                                     ).is_file() else "none"
        raise HFError(f"{directory} has no tokenizer jaxlm can read (tokenizer.json, vocab.txt, "
                      f"or vocab.json + merges.txt); found {found}")
    return tok
