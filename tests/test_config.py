"""Config: presets load, overrides apply, and every bad config is one line + exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from jaxlm.cli import main
from jaxlm.config import ConfigError, check_devices, load_config

CONFIGS = sorted(Path(__file__).parents[1].glob("configs/**/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_presets_load(path):
    cfg = load_config(path)
    assert cfg.model.d_model % cfg.model.n_heads == 0


def test_overrides_and_family_defaults():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "pretrain" / "tiny.yaml",
                      ["train.steps=7", "model.n_layers=3", "model.family=llama",
                       "data.train.0.path=/x/*.txt"])
    assert cfg.train.steps == 7 and cfg.model.n_layers == 3
    assert cfg.model.positions == "rope" and cfg.model.tie_embeddings is False
    assert cfg.data.train[0].path == "/x/*.txt"


def test_family_resolves_to_feature_flags():
    """The family string is resolved once into the flags layers read; each can be overridden."""
    bert = load_config(None, ["model.family=bert", "data.mode=mlm"]).model
    assert (bert.norm, bert.norm_position, bert.mlp, bert.bias, bert.causal) == (
        "layernorm", "post", "gelu", True, False)
    assert bert.type_vocab_size == 2 and bert.embed_norm and bert.norm_eps == 1e-12
    llama = load_config(None, ["model.family=llama", "model.bias=true"]).model
    assert (llama.norm, llama.mlp, llama.bias, llama.causal) == ("rmsnorm", "swiglu", True, True)
    gpt2 = load_config(None).model
    assert (gpt2.norm_position, gpt2.mlp, gpt2.positions) == ("pre", "gelu_tanh", "learned")


BAD = [
    (["model.n_layer=3"], "unknown key 'model.n_layer'"),
    (["model.n_layers=three"], "model.n_layers"),
    (["model.n_heads=5"], "model.n_heads=5 must divide model.d_model"),
    (["model.n_kv_heads=4"], "model.n_kv_heads=4 must divide model.n_heads"),
    (["train.global_batch=12"], "not divisible by the data-parallel size"),
    (["mesh.data=3"], "there are 8 devices"),
    (["model.family=gpt5"], "'gpt2', 'llama' or 'bert'"),
    (["data.mode=mlm"], "data.mode=mlm needs an encoder (model.family=bert)"),
    (["model.family=bert"], "model.family=bert is an encoder: use data.mode=mlm"),
    (["model.family=bert", "data.mode=pad"], "data.mode=pad trains next-token prediction"),
    (["configs/pretrain/tiny.yaml", "train.steps"], "not of the form section.key=value"),
]


@pytest.mark.parametrize("overrides,expected", BAD)
def test_bad_config_one_line_exit_2(capsys, monkeypatch, overrides, expected):
    monkeypatch.chdir(Path(__file__).parents[1])
    assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_config_file(capsys):
    assert main(["train", "no/such.yaml"]) == 2
    assert "no/such.yaml" in capsys.readouterr().err


def test_device_checks_without_compiling():
    cfg = load_config(None, ["mesh.data=2", "mesh.tensor=4", "model.n_heads=2", "model.d_model=64"])
    with pytest.raises(ConfigError, match="model.n_heads=2 is not divisible by mesh.tensor=4"):
        check_devices(cfg, 8)
    assert check_devices(load_config(None, ["mesh.fsdp=2"]), 8) == (4, 2, 1)


def test_cli_exit_code_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "jaxlm.cli", "train", "model.n_heads=5"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "jaxlm: error: model.n_heads=5 must divide model.d_model=192"]


@pytest.mark.parametrize("old,new", [("train.log_every=4", ("logging", "every")),
                                     ("finetune.log_every=4", ("logging", "every")),
                                     ("finetune.checkpoint_every=4", ("checkpoint", "every"))])
def test_moved_shared_settings_still_work_with_a_warning(old, new):
    """Cadences shared by pretraining and fine-tuning are defined once (logging.every,
    checkpoint.every); the old keys map onto them with a one-line warning."""
    from jaxlm.config.schema import ConfigWarning

    with pytest.warns(ConfigWarning, match=rf"{old.split('=')[0]} is now {'.'.join(new)}"):
        cfg = load_config(None, [old])
    section, key = new
    assert getattr(getattr(cfg, section), key) == 4


def test_optimizer_settings_are_one_schema_with_per_section_defaults():
    from jaxlm.config import FinetuneConfig, TrainConfig
    from jaxlm.config.section import OptimizerSettings

    assert issubclass(TrainConfig, OptimizerSettings) and issubclass(FinetuneConfig,
                                                                     OptimizerSettings)
    t, f = TrainConfig(), FinetuneConfig()
    assert (t.b1, t.b2, t.eps, t.lr) == (0.9, 0.95, 1e-8, 2e-3)
    assert (f.b1, f.b2, f.eps, f.lr) == (0.9, 0.999, 1e-8, 5e-4)
