"""LoRA runs exported as Hugging Face PEFT adapters: `peft` loads them onto the same base
model in PyTorch and computes the logits jaxlm computes (f32, within 1e-4); a PEFT adapter
directory is read back as a backbone / generate input."""

from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from finetunehelpers import finetune_args, write_qa, write_task
from hfhelpers import TOL, need_torch, save_tiny

from jaxlm.checkpoint.export import load_params
from jaxlm.cli import main
from jaxlm.config import ModelConfig
from jaxlm.models import DecoderLM, TokenClassifier

F32 = ("model.dtype=float32", "finetune.lora.rank=4", "finetune.lora.alpha=8",
       "finetune.lr=2e-2")


def need_peft():
    need_torch()
    return pytest.importorskip("peft", reason="PEFT parity needs peft (the test extra, "
                               "Python < 3.12)")


def jaxlm_logits(run_dir: Path, module_of, tokens: np.ndarray, *args) -> np.ndarray:
    """The fine-tuned run's own forward (adapters unmerged) on ``tokens`` (and ``args``)."""
    cfg = json.loads((run_dir / "config.json").read_text())
    module = module_of(ModelConfig(**cfg["model"]))
    boxed = jax.eval_shape(lambda r: module.init(r, tokens, *args)["params"],
                           jax.random.PRNGKey(0))
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one),
                          nn.unbox(boxed))
    params = load_params(run_dir / "checkpoints", target)
    assert any("lora_a" in jax.tree_util.keystr(k) for k, _ in
               jax.tree_util.tree_flatten_with_path(params)[0])
    return np.asarray(module.apply({"params": params}, tokens, *args))


@pytest.mark.slow
def test_peft_adapter_of_a_gpt2_generate_run_matches_in_pytorch(tmp_path, capsys):
    peft = need_peft()
    torch, tf = need_torch()
    base = save_tiny("gpt2", tmp_path / "base")
    data = write_task(tmp_path / "data", n_train=48, n_eval=8)
    code = main(finetune_args(tmp_path / "run", base, data, "finetune.problem=generate",
                              "finetune.eval_samples=0", *F32))
    assert code == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "adapter"),
                 "--adapters-only"]) == 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["rank_pattern"]  # fused c_attn: 3r
    tokens = np.random.default_rng(0).integers(0, 4096, (2, 12))
    ours = jaxlm_logits(tmp_path / "run", DecoderLM, tokens)
    model = tf.GPT2LMHeadModel.from_pretrained(base, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    base_model = tf.GPT2LMHeadModel.from_pretrained(base, attn_implementation="eager").eval()
    with torch.no_grad():
        plain = base_model(torch.tensor(tokens)).logits.numpy()
    assert np.abs(theirs - plain).max() > 100 * TOL  # the adapter changes the model
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


def test_peft_adapter_of_a_bert_span_run_matches_in_pytorch(tmp_path):
    peft = need_peft()
    torch, tf = need_torch()
    base = save_tiny("bert", tmp_path / "base")
    data = write_qa(tmp_path / "data", n_train=32, n_eval=8)
    code = main(finetune_args(tmp_path / "run", base, data, "finetune.problem=span",
                              "finetune.max_length=48", "finetune.doc_stride=16", *F32,
                              "finetune.lora.targets=[attention,mlp]"))
    assert code == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "adapter"),
                 "--adapters-only"]) == 0
    tokens = np.random.default_rng(1).integers(5, 40, (2, 10))
    ours = jaxlm_logits(tmp_path / "run", lambda m: TokenClassifier(m, 2, 0.0), tokens,
                        np.ones_like(tokens))
    model = tf.BertForQuestionAnswering.from_pretrained(base, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens))
    theirs = np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


def peft_adapter(tmp_path: Path, base: Path, name: str = "adapter", **config) -> Path:
    """An adapter made by `peft` itself on ``base`` (random B: it changes the model)."""
    peft = need_peft()
    torch, tf = need_torch()
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel.from_pretrained(base)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                           fan_in_fan_out=True, init_lora_weights=False, task_type="CAUSAL_LM",
                           **config)
    model = peft.get_peft_model(model, lora)
    model.save_pretrained(tmp_path / name)
    cfg = json.loads((tmp_path / name / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (tmp_path / name / "adapter_config.json").write_text(json.dumps(cfg))
    return tmp_path / name


def test_a_peft_adapter_is_read_as_its_base_with_the_adapter_merged(tmp_path, capsys):
    from hfhelpers import jaxlm_forward

    peft = need_peft()
    torch, tf = need_torch()
    base = save_tiny("gpt2", tmp_path / "base")
    adapter = peft_adapter(tmp_path, base)
    tokens = np.random.default_rng(2).integers(0, 4096, (2, 12))
    model = peft.PeftModel.from_pretrained(
        tf.GPT2LMHeadModel.from_pretrained(base, attn_implementation="eager"), adapter).eval()
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(jaxlm_forward(adapter, tokens), theirs, atol=TOL, rtol=0)
    # `jaxlm generate ADAPTER` (and finetune.backbone, read the same way): the merged model
    assert main(["convert", str(adapter), str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    outs = []
    for source in (adapter, tmp_path / "merged"):
        assert main(["generate", str(source), "ROMEO:", "--temperature", "0",
                     "--max-new-tokens", "5", "--json"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_a_peft_adapter_on_another_base_is_one_line_error(tmp_path, capsys):
    base = save_tiny("gpt2", tmp_path / "base")
    other = save_tiny("gpt2", tmp_path / "other", n_embd=48)
    adapter = peft_adapter(tmp_path, base)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(other)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    code = main(["generate", str(adapter), "ROMEO:", "--max-new-tokens", "3"])
    err = capsys.readouterr().err
    assert code != 0 and "does not match its base" in err and "Traceback" not in err
    cfg["base_model_name_or_path"] = str(tmp_path / "nowhere")
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    code = main(["generate", str(adapter), "ROMEO:", "--max-new-tokens", "3"])
    err = capsys.readouterr().err
    assert code != 0 and "is not a local Hugging Face model directory" in err
