"""Texts given one per line to `jaxlm predict` and `jaxlm generate`: strict UTF-8, one-line
errors for input that is not text (a file, or bytes piped on stdin)."""

import io
import sys

import pytest

from jaxlm.cli import main
from jaxlm.data.inputs import line_batches, read_lines
from jaxlm.errors import UserError

BINARY = bytes(range(256)) * 4  # 0x80.. is not UTF-8


class Stdin(io.TextIOWrapper):
    def isatty(self) -> bool:
        return False


def pipe(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", Stdin(io.BytesIO(data), encoding="utf-8"))


def test_lines_of_a_file_and_of_stdin(tmp_path, monkeypatch):
    f = tmp_path / "in.txt"
    f.write_text("première ligne\n\n  \nsecond\n", encoding="utf-8")
    assert read_lines(str(f), "text") == ["première ligne", "second"]
    pipe(monkeypatch, b"a\nb\n")
    assert read_lines(None, "text") == ["a", "b"]
    pipe(monkeypatch, b"c\n")
    assert read_lines("-", "prompt") == ["c"]


@pytest.mark.parametrize("data,message", [
    (BINARY, "is not UTF-8 text (byte 0x80 at offset 128)"),
    (b"text\x00with nul\n", "is not text (it holds NUL bytes)"),
    (b"\n \n", "no texts in"),
])
def test_input_that_is_not_text_is_refused(tmp_path, monkeypatch, data, message):
    f = tmp_path / "in.bin"
    f.write_bytes(data)
    with pytest.raises(UserError, match=r"--file .*in\.bin") as err:
        read_lines(str(f), "text")
    assert message in str(err.value)
    pipe(monkeypatch, data)
    with pytest.raises(UserError, match="stdin") as err:
        read_lines(None, "text")
    assert message in str(err.value)


@pytest.mark.parametrize("verb", ["predict", "generate"])
def test_cli_binary_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, verb):
    f = tmp_path / "in.bin"
    f.write_bytes(BINARY)
    run = tmp_path / "no_run"  # the input is read (and refused) before the run is opened
    assert main([verb, str(run), "--file", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxlm: error: --file ") and "UTF-8" in err[0]
    pipe(monkeypatch, BINARY)
    assert main([verb, str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxlm: error: stdin is not UTF-8 text")


def test_version_and_defaults_in_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("jaxlm ")
    for verb, shown in ((["generate"], "(default: 64)"), (["predict"], "(default: 64)"),
                        (["export"], "(default: float32)"),
                        (["tokenizer", "train"], "(default: 4096)")):
        with pytest.raises(SystemExit):
            main([*verb, "--help"])
        assert shown in " ".join(capsys.readouterr().out.split()), verb


def test_lines_stream_in_batches_and_keep_blank_ones(monkeypatch):
    read = []

    class Lines(io.BytesIO):  # records how far the reader got
        def __next__(self):
            read.append(line := super().__next__())
            return line

    monkeypatch.setattr(sys, "stdin", Stdin(Lines(b"a\n\nb\r\nc\nd"), encoding="utf-8"))
    batches = line_batches(None, "text", size=2)
    assert next(batches) == ["a", ""] and len(read) == 2  # the rest is not read yet
    assert list(batches) == [["b", "c"], ["d"]]
