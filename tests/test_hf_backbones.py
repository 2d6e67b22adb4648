"""Hugging Face directories wherever a backbone is accepted: ``model.init_from`` (continued
pretraining: architecture, weights and tokenizer from the directory, the outputs of
`transformers`; a resumed run ignores it) and ``finetune.backbone``."""

import json

import jax
import numpy as np
import optax
import pytest
from finetunehelpers import finetune_args, last_json, synthetic_dir
from hfhelpers import TOL, hf_model, need_torch, save_tiny, torch_forward

from jaxlm.cli import main
from jaxlm.config import ConfigError, load_config
from jaxlm.runtime.hardware import resolve_config
from jaxlm.sharding import activate, logical_rules, make_mesh
from jaxlm.tasks import pretraining_task
from jaxlm.train.init_from import apply_init_from, load_init_from
from jaxlm.train.state import create_train_state

need_torch()
TOKENS = np.random.default_rng(1).integers(5, 60, (2, 16)).astype(np.int32)


def initialised(*overrides):
    """What a fresh `jaxlm train` run starts from: (config, params, init_from report)."""
    cfg = load_config(None, ["model.dtype=float32", "data.seq_len=64", "mesh.fsdp=2",
                             "mesh.tensor=2", *overrides])
    cfg, source = apply_init_from(cfg)
    mesh, rules = make_mesh(cfg), logical_rules(cfg.mesh)
    task = pretraining_task(resolve_config(cfg))
    state, shardings = create_train_state(task, optax.sgd(0.1), mesh, rules, 0)
    params, report = load_init_from(source, state.params, shardings.params)
    with activate(mesh, rules):
        logits = jax.jit(lambda p, x: task.model.apply({"params": p}, x))(params, TOKENS)
    return cfg, np.asarray(logits), report


@pytest.mark.parametrize("kind,cls_name,kw", [
    ("llama", "LlamaForCausalLM", {"num_key_value_heads": 2}),
    ("bert", "BertForMaskedLM", {}),
])
def test_init_from_starts_at_the_transformers_outputs(kind, cls_name, kw, tmp_path):
    directory = save_tiny(kind, tmp_path / "hf", **kw)
    cfg, logits, report = initialised(f"model.init_from={directory}")
    assert cfg.model.d_model == 32 and cfg.data.tokenizer == str(directory)
    assert cfg.data.mode == ("mlm" if kind == "bert" else "pack")
    head = "mlm_head" if kind == "bert" else "lm_head"
    assert f"loaded backbone, {head} from" in report and "freshly" not in report
    ref = torch_forward(hf_model(directory, cls_name), TOKENS)
    assert float(np.abs(logits - ref).max()) <= TOL


def test_init_from_an_encoder_takes_data_mode_mlm_on_the_command_line(tmp_path):
    """`jaxlm train model.init_from=<HF encoder> data.mode=mlm` (domain-adaptive pretraining
    as users write it): the mode is checked against the source's architecture, not against
    the default decoder's, and a decoder source still refuses it in one line."""
    _, tf = need_torch()
    directory = save_tiny("bert", tmp_path / "hf", model_class=tf.BertForMaskedLM)
    cfg, _, report = initialised(f"model.init_from={directory}", "data.mode=mlm",
                                 "data.seq_len=16")
    assert cfg.model.family == "bert" and cfg.data.mode == "mlm"
    assert "loaded backbone, mlm_head from" in report
    decoder = save_tiny("gpt2", tmp_path / "gpt2")
    with pytest.raises(ConfigError, match=r"model.init_from=.*gpt2 \(its architecture\): "
                       "data.mode=mlm needs an encoder"):
        apply_init_from(load_config(None, [f"model.init_from={decoder}", "data.mode=mlm",
                                           "data.seq_len=16"]))


def test_init_from_a_base_model_keeps_a_fresh_head(tmp_path):
    _, tf = need_torch()
    directory = save_tiny("bert", tmp_path / "hf", model_class=tf.BertModel)
    _, _, report = initialised(f"model.init_from={directory}")
    assert "loaded backbone from" in report
    assert "freshly initialised (not in the source): mlm_head" in report


@pytest.mark.slow
def test_train_cli_from_hf_and_resume_ignores_it(tmp_path, capsys):
    directory = save_tiny("gpt2", tmp_path / "hf")
    run = tmp_path / "run"
    args = ["train", f"model.init_from={directory}", f"train.run_dir={run}", "data.seq_len=64",
            "train.global_batch=8", "logging.every=1", "train.sample_tokens=0",
            "train.eval_batches=1", "logging.progress=false"]
    assert main([*args, "train.steps=2", "--json"]) == 0
    out = capsys.readouterr()
    assert "model.init_from: loaded backbone from" in out.out + out.err
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["d_model"] == 32 and saved["model"]["init_from"] == str(directory)
    assert saved["data"]["tokenizer"] == str(directory)
    assert main([*args, "train.steps=3", "--json"]) == 0  # resumes at step 2: loads nothing
    out = capsys.readouterr()
    assert "model.init_from" not in out.out + out.err
    assert last_json(out.out)["steps"] == 3


def test_init_from_a_too_short_model_is_one_line(tmp_path, capsys):
    directory = save_tiny("gpt2", tmp_path / "hf")
    capsys.readouterr()
    assert main(["train", f"model.init_from={directory}", f"train.run_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"jaxlm: error: model.init_from={directory} (its architecture): "
                   "data.seq_len=128 exceeds model.max_seq_len=64")


@pytest.mark.slow
def test_finetune_a_decoder_from_an_hf_directory(tmp_path, capsys):
    directory = save_tiny("gpt2", tmp_path / "hf")
    data = synthetic_dir(tmp_path / "data", n_train=32, n_eval=8)
    assert main(finetune_args(tmp_path / "run", directory, data)) == 0
    out = capsys.readouterr()
    assert "loaded  backbone: 36 tensors" in out.out + out.err
    assert "accuracy" in last_json(out.out)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["finetune"]["tokenizer"] == str(directory) and saved["model"]["family"] == "gpt2"
