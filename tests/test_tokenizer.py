"""Tests of jaxlm.data.tokenizer and the embedded default corpus/tokenizer."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from jaxlm.data.tokenizer import (
    SPECIAL_TOKENS,
    SpecialIds,
    TokenizerError,
    default_corpus_files,
    iter_texts,
    load_tokenizer,
    special_ids,
    train_tokenizer,
)

ENGLISH = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n\n"
    "  Or to take arms against a sea of troubles   \n"
    "And by opposing end them. Caf\u00e9 na\u00efve \u2014 \U0001f642\t42%!"
)

SMALL_TEXT = (
    "Now is the winter of our discontent\n"
    "Made glorious summer by this sun of York;\n"
    "And all the clouds that lour'd upon our house\n"
    "In the deep bosom of the ocean buried.\n"
) * 20


@pytest.fixture(scope="module")
def default_tok():
    return load_tokenizer("default")


def test_default_tokenizer_specials_and_vocab(default_tok):
    assert default_tok.get_vocab_size() == 4096
    assert special_ids(default_tok) == SpecialIds(pad=0, eos=1, mask=2)
    assert special_ids(default_tok).bos == 1
    for i, name in enumerate(SPECIAL_TOKENS):
        assert default_tok.token_to_id(name) == i
        assert default_tok.id_to_token(i) == name


def test_default_tokenizer_round_trip(default_tok):
    enc = default_tok.encode(ENGLISH)
    assert 0 < len(enc.ids) < len(ENGLISH.encode())  # BPE merges something
    assert all(i > 2 for i in enc.ids)  # plain text never yields a special id
    assert default_tok.decode(enc.ids) == ENGLISH


def test_default_tokenizer_compresses_english(default_tok):
    text = "My lord, I will speak to him again; and then the king shall know."
    assert len(text.encode()) / len(default_tok.encode(text).ids) > 2.5


def _check_trained(tok, text: str, vocab_size: int) -> None:
    assert tok.get_vocab_size() == vocab_size
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert special_ids(tok) == SpecialIds(pad=0, eos=1, mask=2)
    assert tok.decode(tok.encode(text).ids) == text
    # Every byte is in the vocabulary: unseen characters still round-trip.
    assert tok.decode(tok.encode(ENGLISH).ids) == ENGLISH


def test_train_on_txt(tmp_path: Path):
    src = tmp_path / "corpus.txt"
    src.write_text(SMALL_TEXT, encoding="utf-8")
    out = tmp_path / "tok" / "tokenizer.json"
    tok = train_tokenizer([str(src)], 300, str(out), show_progress=False)
    assert out.is_file()
    _check_trained(tok, SMALL_TEXT, 300)
    # The 41 learned merges compress the training text.
    assert len(tok.encode(SMALL_TEXT).ids) < 0.7 * len(SMALL_TEXT.encode())
    reloaded = load_tokenizer(str(out))
    assert reloaded.encode(SMALL_TEXT).ids == tok.encode(SMALL_TEXT).ids


def test_train_on_jsonl_gz_and_txt_gz(tmp_path: Path):
    docs = [{"text": para} for para in SMALL_TEXT.split("\n") if para] + [{"text": "x"}]
    src = tmp_path / "docs.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    src_txt = tmp_path / "more.txt.gz"
    with gzip.open(src_txt, "wt", encoding="utf-8") as f:
        f.write(SMALL_TEXT)
    assert list(iter_texts([str(src)])) == [d["text"] for d in docs]
    assert "".join(iter_texts([str(src_txt)])) == SMALL_TEXT
    tok = train_tokenizer([str(src), str(src_txt)], 300, str(tmp_path / "t.json"), 2)
    _check_trained(tok, SMALL_TEXT, 300)


def test_train_rejects_bad_inputs(tmp_path: Path):
    bad = tmp_path / "data.csv"
    bad.write_text("a,b\n")
    with pytest.raises(TokenizerError, match=re.escape("data.csv")):
        train_tokenizer([str(bad)], 300, str(tmp_path / "t.json"))
    with pytest.raises(TokenizerError, match=re.escape("missing.txt")):
        train_tokenizer([str(tmp_path / "missing.txt")], 300, str(tmp_path / "t.json"))
    no_text = tmp_path / "x.jsonl"
    no_text.write_text('{"body": "hello"}\n')
    with pytest.raises(TokenizerError, match=re.escape("x.jsonl:1")):
        train_tokenizer([str(no_text)], 300, str(tmp_path / "t.json"))
    good = tmp_path / "ok.txt"
    good.write_text(SMALL_TEXT)
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer([str(good)], 100, str(tmp_path / "t.json"))


def test_load_from_directory_and_file(tmp_path: Path, default_tok):
    default_tok.save(str(tmp_path / "tokenizer.json"))
    by_dir = load_tokenizer(str(tmp_path))
    by_file = load_tokenizer(str(tmp_path / "tokenizer.json"))
    ids = default_tok.encode(ENGLISH).ids
    assert by_dir.encode(ENGLISH).ids == ids
    assert by_file.encode(ENGLISH).ids == ids


def test_bad_spec_raises_with_path(tmp_path: Path):
    missing = tmp_path / "no_such_tokenizer.json"
    with pytest.raises(
        TokenizerError, match=re.escape("no_such_tokenizer.json")
    ) as err:
        load_tokenizer(str(missing))
    assert isinstance(err.value, ValueError)
    assert "\n" not in str(err.value)
    with pytest.raises(TokenizerError, match=re.escape(tmp_path.name)):
        load_tokenizer(str(tmp_path))  # a directory without tokenizer.json
    junk = tmp_path / "tokenizer.json"
    junk.write_text("not json")
    with pytest.raises(TokenizerError, match=re.escape("tokenizer.json")):
        load_tokenizer(str(junk))


def test_special_ids_of_foreign_tokenizers(tmp_path: Path):
    from tokenizers import Tokenizer, models

    bert = Tokenizer(
        models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[SEP]": 2, "[MASK]": 3})
    )
    assert special_ids(bert) == SpecialIds(pad=0, eos=2, mask=3)
    t5 = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, "<unk>"))
    assert special_ids(t5) == SpecialIds(pad=0, eos=1, mask=None)


def test_default_corpus_files():
    files = default_corpus_files()
    assert set(files) == {"train", "valid"}
    for path in files.values():
        assert Path(path).is_file()
    train = list(iter_texts([files["train"]]))
    valid = list(iter_texts([files["valid"]]))
    assert sum(len(t.encode()) for t in train) > 1_000_000
    assert len(valid) > 10
    assert not set(train) & set(valid)
    assert "Gutenberg" not in "".join(train[:50])
