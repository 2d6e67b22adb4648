"""Imported Hugging Face weights give PyTorch `transformers`' outputs (max abs diff <= 1e-4 in
f32) for GPT-2, Llama with grouped-query attention and BERT; padded batches match their
unpadded rows; a jaxlm export converted to HF loads in `transformers` with no missing or
unexpected keys and gives the same logits, and an HF model converted there and back keeps
its config.json; the completion-only loss of a packed row is
`transformers`' loss with labels -100 on the prompts, and the span head's start / end logits
are `BertForQuestionAnswering`'s. Tiny random models, saved locally: no
hub."""

import json

import datasets
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hfhelpers import (
    TOL,
    hf_model,
    jaxlm_forward,
    jaxlm_model,
    load_sharded,
    mesh_and_rules,
    need_torch,
    save_tiny,
    torch_forward,
)

from jaxlm.cli import main
from jaxlm.config import LabeledDataConfig
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.finetune.completions import encode_completions, make_rows
from jaxlm.models import Backbone
from jaxlm.sharding import activate
from jaxlm.tasks import CausalLM, SpanExtraction

torch, transformers = need_torch()

TOKENS = np.random.default_rng(0).integers(5, 60, (2, 16)).astype(np.int32)
CASES = {  # name: (family, HF class, config overrides)
    "gpt2": ("gpt2", "GPT2LMHeadModel", {}),
    "gpt2_untied_gelu": ("gpt2", "GPT2LMHeadModel", {"tie_word_embeddings": False,
                                                     "activation_function": "gelu"}),
    "llama_kv1": ("llama", "LlamaForCausalLM", {"num_key_value_heads": 1}),
    "llama_kv2": ("llama", "LlamaForCausalLM", {"num_key_value_heads": 2}),
    "llama_kv4_tied": ("llama", "LlamaForCausalLM", {"num_key_value_heads": 4,
                                                     "tie_word_embeddings": True}),
    "bert": ("bert", "BertForMaskedLM", {}),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny HF model directory per case, made on first use."""
    made = {}

    def get(name):
        if name not in made:
            family, _, kw = CASES[name]
            made[name] = save_tiny(family, tmp_path_factory.mktemp(name), **kw)
        return made[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tiny):
    directory = tiny(name)
    ref = torch_forward(hf_model(directory, CASES[name][1]), TOKENS)
    mesh = (4, 2, 1) if name == "llama_kv1" else (2, 2, 2)  # 1 kv head: no tensor split
    out = jaxlm_forward(directory, TOKENS, mesh_shape=mesh)  # loaded onto the sharded mesh
    assert np.abs(ref).max() > 0.5  # outputs large enough for a wrong mapping to show
    diff = float(np.abs(out - ref).max())
    print(f"parity {name}: max abs diff {diff:.2e}")
    assert diff <= TOL, diff


def test_bert_hidden_states_match_transformers(tiny):
    directory = tiny("bert")
    ref = torch_forward(hf_model(directory, "BertModel"), TOKENS, what="hidden")
    out = jaxlm_forward(directory, TOKENS, what="hidden")
    assert float(np.abs(out - ref).max()) <= TOL


@pytest.mark.parametrize("name", ["gpt2", "llama_kv2", "bert"])
def test_padded_batch_matches_unpadded_rows(name, tiny):
    directory = tiny(name)
    lengths = (16, 9)
    mask = (np.arange(16)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)  # right pad
    tokens = np.where(mask > 0, TOKENS, 0).astype(np.int32)
    padded = jaxlm_forward(directory, tokens, segment_ids=mask)
    hf = torch_forward(hf_model(directory, CASES[name][1]), tokens, mask)
    for row, n in enumerate(lengths):
        alone = jaxlm_forward(directory, tokens[row : row + 1, :n], mesh_shape=(1, 1, 1))
        assert float(np.abs(padded[row, :n] - alone[0]).max()) <= TOL
        assert float(np.abs(padded[row, :n] - hf[row, :n]).max()) <= TOL


@pytest.mark.parametrize("name", ["gpt2", "gpt2_untied_gelu", "llama_kv2", "bert"])
def test_export_round_trips_through_transformers(name, tiny, tmp_path, capsys):
    """HF → jaxlm export → HF: transformers loads it with no missing or unexpected keys and
    gives the original logits (bf16 too, within bf16's precision)."""
    directory, cls_name = tiny(name), CASES[name][1]
    assert main(["convert", str(directory), str(tmp_path / "jx")]) == 0
    assert main(["convert", str(tmp_path / "jx"), str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [cls_name]
    # the source config.json comes back as it was: attn_pdrop, pad_token_id, ... included
    assert config == json.loads((directory / "config.json").read_text())
    _, tf = need_torch()
    model, info = getattr(tf, cls_name).from_pretrained(
        tmp_path / "hf", output_loading_info=True, attn_implementation="eager")
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ref = torch_forward(hf_model(directory, cls_name), TOKENS)
    assert float(np.abs(torch_forward(model.eval(), TOKENS) - ref).max()) <= TOL
    assert main(["convert", str(tmp_path / "jx"), str(tmp_path / "hf16"), "--dtype",
                 "bfloat16"]) == 0
    assert json.loads((tmp_path / "hf16" / "config.json").read_text())["dtype"] == "bfloat16"
    bf16 = getattr(tf, cls_name).from_pretrained(tmp_path / "hf16").float().eval()
    assert float(np.abs(torch_forward(bf16, TOKENS) - ref).max()) < 0.1


def test_sharded_checkpoint_loads_like_a_single_file(tiny, tmp_path):
    """``model.safetensors.index.json`` + shards (as `save_pretrained` writes big models)."""
    directory = tiny("llama_kv2")
    model = hf_model(directory, "LlamaForCausalLM")
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    (tmp_path / "tokenizer.json").write_bytes((directory / "tokenizer.json").read_bytes())
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    np.testing.assert_allclose(jaxlm_forward(tmp_path, TOKENS), jaxlm_forward(directory, TOKENS),
                               atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_jaxlm_run_exports_to_transformers(family, tmp_path, capsys):
    """A jaxlm pretraining run → `jaxlm convert` → `transformers` gives jaxlm's logits."""
    import flax.linen as nn
    import jax
    from finetunehelpers import pretrain

    from jaxlm.checkpoint.export import load_params
    from jaxlm.config import ModelConfig
    from jaxlm.models import DecoderLM, MaskedLM

    extra = {"gpt2": [], "llama": ["model.n_kv_heads=2"], "bert": ["data.mode=mlm"]}[family]
    run = pretrain(tmp_path / "run", f"model.family={family}", "model.dtype=float32", *extra)
    assert main(["convert", str(run), str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    config = json.loads((run / "config.json").read_text())
    model_cfg = ModelConfig(**config["model"])
    module = MaskedLM(model_cfg) if model_cfg.is_encoder else DecoderLM(model_cfg)
    tokens = TOKENS[:, :12]
    abstract = jax.eval_shape(lambda r: nn.unbox(module.init(r, tokens)["params"]),
                              jax.random.PRNGKey(0))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            abstract)
    ours = np.asarray(module.apply({"params": load_params(run, abstract)}, tokens))
    theirs = torch_forward(hf_model(tmp_path / "hf", json.loads(
        (tmp_path / "hf" / "config.json").read_text())["architectures"][0]), tokens)
    assert float(np.abs(ours - theirs).max()) <= TOL


def test_completion_only_loss_of_a_packed_row_matches_transformers_labels(tiny):
    """The generative fine-tuning loss of a packed row (three examples, loss on completions
    and EOS only) equals `transformers`' loss with labels = -100 on each prompt, example by
    example, within 1e-5 in f32."""
    directory = tiny("gpt2")
    tokenizer = load_tokenizer(str(directory / "tokenizer.json"))
    rows = [{"prompt": "the colour of a lemon is", "completion": " pale yellow"},
            {"prompt": "reverse: apple plum =>", "completion": " plum apple"},
            {"prompt": "hello", "completion": " world, and the quick brown fox"}]
    data = encode_completions(datasets.Dataset.from_list(rows), "train", "rows", tokenizer,
                              LabeledDataConfig(), 48)
    batch = make_rows(data, [[0, 1, 2]] + [[]] * 3, 48, loss_on_prompt=False)  # 4 rows
    model_cfg, module = jaxlm_model(directory)
    mesh, rules = mesh_and_rules((2, 2, 2))
    params = load_sharded(directory, module, mesh, rules, batch["inputs"])
    task = CausalLM(model_cfg)
    with activate(mesh, rules):
        _, sums = jax.jit(task.loss_sums)(params, {k: jnp.asarray(v) for k, v in batch.items()})
    ours = float(sums["nll"]) / float(sums["weight"])
    model = hf_model(directory, "GPT2LMHeadModel")
    nll, count = 0.0, 0
    for i in range(3):
        ids = torch.tensor(data.ids[i][None].astype(np.int64))
        labels = ids.clone()
        labels[0, :int(data.prompt_lens[i])] = -100  # no loss on BOS + prompt
        with torch.no_grad():
            loss = model(ids, labels=labels).loss.item()
        n = int((labels[0, 1:] != -100).sum())
        nll, count = nll + loss * n, count + n
    assert count == float(sums["weight"])
    assert abs(ours - nll / count) <= 1e-5, (ours, nll / count)


def test_span_head_logits_match_bert_for_question_answering(tmp_path):
    """A BERT backbone imported from Hugging Face with the span head set to
    ``BertForQuestionAnswering``'s ``qa_outputs`` gives its start / end logits (f32)."""
    directory = save_tiny("bert", tmp_path / "qa", model_class=transformers.BertModel)
    reference = hf_model(directory, "BertForQuestionAnswering")  # (a fresh qa_outputs)
    tokens = TOKENS[:, :12]
    types = np.zeros_like(tokens)
    types[:, 6:] = 1  # question, then context
    with torch.no_grad():
        out = reference(torch.tensor(tokens, dtype=torch.long),
                        token_type_ids=torch.tensor(types, dtype=torch.long))
    model_cfg, _ = jaxlm_model(directory)
    task = SpanExtraction(model_cfg, dropout=0.0)
    mesh, rules = mesh_and_rules((2, 2, 2))
    backbone = load_sharded(directory, Backbone(model_cfg), mesh, rules, tokens, "backbone")
    qa = reference.qa_outputs
    params = {"backbone": backbone, "head": {"classifier": {
        "kernel": jnp.asarray(qa.weight.detach().numpy().T), "bias":
        jnp.asarray(qa.bias.detach().numpy())}}}
    batch = {"inputs": tokens, "segment_ids": np.ones_like(tokens), "token_types": types,
             "span_mask": np.ones_like(tokens)}
    with activate(mesh, rules):
        logits = np.asarray(jax.jit(task.logits)(params, batch))  # (B, L, 2)
    np.testing.assert_allclose(logits[..., 0], out.start_logits.numpy(), atol=TOL)
    np.testing.assert_allclose(logits[..., 1], out.end_logits.numpy(), atol=TOL)


def test_a_bert_for_question_answering_directory_brings_its_span_head(tmp_path):
    """A fine-tuned Hugging Face BertForQuestionAnswering is a span backbone with its head:
    fine-tuning starts from its qa_outputs, and the start / end logits are its own."""
    import flax.linen as nn

    from jaxlm.checkpoint.pretrained import hf_source
    from jaxlm.finetune.backbone import load_backbone

    _, tf = need_torch()
    directory = save_tiny("bert", tmp_path / "qa", model_class=tf.BertForQuestionAnswering)
    reference = hf_model(directory, "BertForQuestionAnswering")
    tokens = TOKENS[:, :12]
    types = np.zeros_like(tokens)
    types[:, 6:] = 1
    with torch.no_grad():
        out = reference(torch.tensor(tokens, dtype=torch.long),
                        token_type_ids=torch.tensor(types, dtype=torch.long))
    model_cfg, _ = jaxlm_model(directory)
    task = SpanExtraction(model_cfg, dropout=0.0)
    batch = {"inputs": tokens, "segment_ids": np.ones_like(tokens), "token_types": types,
             "span_mask": np.ones_like(tokens)}
    fresh = nn.unbox(task.model.init(jax.random.PRNGKey(0), tokens, batch["segment_ids"],
                                     types)["params"])
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params, report = load_backbone(hf_source(directory), fresh, jax.tree.map(lambda _: one, fresh),
                                   span=True)
    assert "loaded  head/classifier (finetune.problem=span)" in report
    np.testing.assert_array_equal(params["head"]["classifier"]["bias"],
                                  reference.qa_outputs.bias.detach().numpy())
    logits = np.asarray(jax.jit(task.logits)(params, batch))  # (B, L, 2)
    np.testing.assert_allclose(logits[..., 0], out.start_logits.numpy(), atol=TOL)
    np.testing.assert_allclose(logits[..., 1], out.end_logits.numpy(), atol=TOL)
    _, report = load_backbone(hf_source(directory), fresh, jax.tree.map(lambda _: one, fresh))
    assert "loaded  head/classifier" not in report  # only for span (dropped otherwise)
