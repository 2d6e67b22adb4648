"""Bad Hugging Face input is one line and exit code 2: unsupported model types,
architectures and settings, missing / extra tensors, shape mismatches (naming the tensor and
both shapes), pickle-only directories, and `jaxlm convert` misuse. No torch needed: the HF
directories are written by jaxlm's own converter from tiny random jaxlm exports."""

import json

import numpy as np
import pytest
from hfhelpers import tiny_export
from safetensors.numpy import load_file, save_file

from jaxlm.cli import main


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """An HF directory per family, converted from a jaxlm export."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for family in ("gpt2", "llama", "bert"):
        export = tiny_export(root / f"{family}_export", family)
        assert main(["convert", str(export), str(root / family)]) == 0
        out[family] = root / family
    return out


def copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def error_line(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jaxlm: error: "), err
    return err


def edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def edit_weights(directory, fn):
    tensors = load_file(str(directory / "model.safetensors"))
    save_file(fn(tensors), str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_converted_directories_read_back(hf_dirs, tmp_path, capsys):
    for family, directory in hf_dirs.items():
        assert main(["convert", str(directory), str(tmp_path / family)]) == 0
        assert "wrote" in capsys.readouterr().out
        original = load_file(str(directory.parent / f"{family}_export" / "model.safetensors"))
        back = load_file(str(tmp_path / family / "model.safetensors"))
        assert back.keys() == original.keys()
        for k in original:
            np.testing.assert_array_equal(back[k], original[k])


@pytest.mark.parametrize("family,changes,expected", [
    ("gpt2", {"model_type": "mistral"},
     "model_type='mistral' is not supported; jaxlm converts gpt2, llama, bert"),
    ("bert", {"architectures": ["BertForSequenceClassification"]},
     "is not supported for bert; jaxlm reads BertModel, BertForMaskedLM, BertForPreTraining"),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
     "rope_type='llama3'"),
    ("llama", {"attention_bias": True}, "attention_bias=True but mlp_bias=False"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ("bert", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
])
def test_unsupported_configs_are_refused(hf_dirs, family, changes, expected, tmp_path, capsys):
    directory = copy(hf_dirs[family], tmp_path / "src")
    edit_config(directory, **changes)
    assert expected in error_line(capsys, "convert", str(directory), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_extra_and_misshapen_tensors(hf_dirs, tmp_path, capsys):
    src = hf_dirs["gpt2"]
    missing = copy(src, tmp_path / "missing")
    edit_weights(missing, lambda t: {k: v for k, v in t.items() if "h.1.attn.c_attn" not in k})
    err = error_line(capsys, "convert", str(missing), str(tmp_path / "o1"))
    assert "lacks 2 tensors this GPT2LMHeadModel needs: transformer.h.1.attn.c_attn.bias, " \
           "transformer.h.1.attn.c_attn.weight" in err
    extra = copy(src, tmp_path / "extra")
    edit_weights(extra, lambda t: {**t, "transformer.h.7.mlp.c_fc.weight": np.zeros((2, 2),
                                                                                     np.float32)})
    err = error_line(capsys, "convert", str(extra), str(tmp_path / "o2"))
    assert "holds 1 tensors that a GPT2LMHeadModel with this config.json does not have: " \
           "transformer.h.7.mlp.c_fc.weight (2, 2)" in err
    shape = copy(src, tmp_path / "shape")
    edit_weights(shape, lambda t: {**t, "transformer.h.0.attn.c_attn.weight":
                                   t["transformer.h.0.attn.c_attn.weight"][:, :90]})
    err = error_line(capsys, "convert", str(shape), str(tmp_path / "o3"))
    assert "transformer.h.0.attn.c_attn.weight: (32, 90) in the checkpoint, (32, 96) expected " \
           "from config.json" in err


def test_pickle_only_directory_is_refused_unread(hf_dirs, tmp_path, capsys):
    directory = copy(hf_dirs["bert"], tmp_path / "src")
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"not even read")
    err = error_line(capsys, "convert", str(directory), str(tmp_path / "out"))
    assert "only pickled PyTorch weights (pytorch_model.bin); jaxlm never loads pickle" in err
    err = error_line(capsys, "finetune", f"finetune.backbone={directory}",
                     f"finetune.run_dir={tmp_path / 'run'}")
    assert "never loads pickle" in err


def test_convert_misuse(hf_dirs, tmp_path, capsys):
    src = hf_dirs["llama"]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    assert "not empty; pass --overwrite" in error_line(capsys, "convert", str(src),
                                                      str(tmp_path / "busy"))
    assert main(["convert", str(src), str(tmp_path / "busy"), "--overwrite"]) == 0
    capsys.readouterr()
    assert "which converts to jaxlm" in error_line(capsys, "convert", str(src),
                                                  str(tmp_path / "x"), "--to", "hf")
    assert "neither a Hugging Face model directory" in error_line(
        capsys, "convert", str(tmp_path / "busy" / "keep.txt"), str(tmp_path / "y"))
    assert "does not exist" in error_line(capsys, "convert", str(tmp_path / "nope"),
                                          str(tmp_path / "z"))


def test_round_trip_keeps_the_source_config_only_while_it_fits(hf_dirs, tmp_path, capsys):
    """HF → jaxlm → HF writes the source config.json again (keys jaxlm has no field for
    included), but not into an export whose model it no longer describes."""
    src = copy(hf_dirs["gpt2"], tmp_path / "src")
    edit_config(src, attn_pdrop=0.1, pad_token_id=None, initializer_range=0.02,
                summary_type="cls_index")
    source = json.loads((src / "config.json").read_text())
    assert main(["convert", str(src), str(tmp_path / "jx")]) == 0
    assert main(["convert", str(tmp_path / "jx"), str(tmp_path / "back")]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == source
    kept = json.loads((tmp_path / "jx" / "hf_config.json").read_text())
    (tmp_path / "jx" / "hf_config.json").write_text(json.dumps({**kept, "n_layer": 7}))
    assert main(["convert", str(tmp_path / "jx"), str(tmp_path / "own")]) == 0
    capsys.readouterr()
    own = json.loads((tmp_path / "own" / "config.json").read_text())
    assert own["n_layer"] == source["n_layer"] and own["attn_pdrop"] == 0.0  # jaxlm's own
    (tmp_path / "jx" / "hf_config.json").write_text(json.dumps(kept))
    export = hf_dirs["gpt2"].parent / "gpt2_export"  # `jaxlm export` weights, same model
    (tmp_path / "jx" / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
    assert main(["convert", str(tmp_path / "jx"), str(tmp_path / "mine")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "mine" / "config.json").read_text())["attn_pdrop"] == 0.0


def test_unrepresentable_jaxlm_model_is_refused(tmp_path, capsys):
    export = tiny_export(tmp_path / "export", "gpt2", norm="rmsnorm")
    err = error_line(capsys, "convert", str(export), str(tmp_path / "out"))
    assert "model.norm='rmsnorm' cannot be written as a Hugging Face gpt2 model" in err
