"""`jaxlm generate` takes a Hugging Face directory like a run or an export: the same weights
through either give the same greedy tokens (no torch needed: the HF directory is made by
jaxlm's own converter)."""

import json

from hfhelpers import tiny_export

from jaxlm.cli import main


def test_generate_from_an_hf_directory_equals_the_export(tmp_path, capsys):
    export = tiny_export(tmp_path / "export", "gpt2")
    assert main(["convert", str(export), str(tmp_path / "hf"), "--to", "hf"]) == 0
    capsys.readouterr()
    rows = []
    for source in (export, tmp_path / "hf"):
        assert main(["generate", str(source), "ROMEO:", "To be", "--temperature", "0",
                     "--max-new-tokens", "6", "--json"]) == 0
        rows.append([json.loads(x)["completion"] for x in
                     capsys.readouterr().out.strip().splitlines()])
    assert rows[0] == rows[1] and all(rows[0])
