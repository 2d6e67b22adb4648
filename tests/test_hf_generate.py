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


def test_dtype_forces_the_compute_dtype_of_convert_and_generate(tmp_path, capsys, monkeypatch):
    """``--dtype float32`` records float32 compute in the converted export and makes `jaxlm
    generate` compute in it; the default ``auto`` keeps model.dtype=auto (bf16 where the
    hardware has native bf16)."""
    from safetensors import safe_open

    from jaxlm.generate import Generator

    export = tiny_export(tmp_path / "export", "gpt2")
    assert main(["convert", str(export), str(tmp_path / "hf"), "--to", "hf"]) == 0
    for dtype in ("auto", "float32", "bfloat16"):
        out = tmp_path / f"jx_{dtype}"
        assert main(["convert", str(tmp_path / "hf"), str(out), "--dtype", dtype]) == 0
        assert f"model.dtype={dtype}" in capsys.readouterr().out
        assert json.loads((out / "config.json").read_text())["model"]["dtype"] == dtype
        with safe_open(str(out / "model.safetensors"), "np") as f:
            stored = f.get_tensor(next(iter(f.keys()))).dtype.name
        assert stored == ("bfloat16" if dtype == "bfloat16" else "float32")
    loaded = []
    real = Generator.load.__func__
    monkeypatch.setattr(Generator, "load", classmethod(
        lambda cls, *a, **kw: loaded.append(real(cls, *a, **kw)) or loaded[-1]))
    for dtype, source in (("float32", "jx_bfloat16"), ("bfloat16", "jx_float32")):
        assert main(["generate", str(tmp_path / source), "ROMEO:", "--temperature", "0",
                     "--max-new-tokens", "2", "--dtype", dtype]) == 0
        assert loaded[-1].cfg.dtype == dtype  # the saved model.dtype is replaced
    assert main(["generate", str(tmp_path / "jx_float32"), "ROMEO:", "--max-new-tokens", "2"]) == 0
    assert loaded[-1].cfg.dtype == "float32"  # no --dtype: the model's own
