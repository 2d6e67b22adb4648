"""Generative fine-tuning (finetune.problem=generate): examples are packed without seeing each
other, only completions carry loss, prompts are cut from the left or refused, the CLI learns a
task and its run generates."""

import json
import subprocess
import sys

import datasets
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from finetunehelpers import colour_task, last_json, pretrain, reverse_task, write_task

from jaxlm.cli import main
from jaxlm.config import ConfigError, LabeledDataConfig, ModelConfig, load_config
from jaxlm.data.errors import DataError
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.finetune.chat import DEFAULT, render, template_of, user_prompt
from jaxlm.finetune.completions import encode_completions, make_rows, pack_rows, padding_waste
from jaxlm.finetune.text_metrics import exact_match, normalize, score, token_f1
from jaxlm.runtime.hardware import resolve_auto
from jaxlm.tasks import CausalLM


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("default")


def encoded(rows, tokenizer, max_length=48, truncation="left", **columns):
    ds = datasets.Dataset.from_list(rows)
    return encode_completions(ds, "train", "rows", tokenizer, LabeledDataConfig(**columns),
                              max_length, truncation)


def test_packed_examples_see_only_themselves_and_only_completions_carry_loss(tokenizer):
    data = encoded(reverse_task(12, 0), tokenizer)
    rows = pack_rows(data.lengths, 48, seed=0)
    assert sorted(i for r in rows for i in r) == list(range(12))  # each example once, whole
    assert len(rows) < 12 and all(sum(data.lengths[i] for i in r) <= 48 for r in rows)
    batch = make_rows(data, rows, 48, loss_on_prompt=False)
    # weights: exactly the completion tokens and EOS of every example
    completions = [tokenizer.encode(r["completion"], add_special_tokens=False).ids
                   for r in reverse_task(12, 0)]
    assert batch["weights"].sum() == sum(len(c) + 1 for c in completions)
    eos = tokenizer.token_to_id("<|endoftext|>")
    for r, examples in enumerate(rows):
        at = 0
        for s, i in enumerate(examples, start=1):
            n = int(data.lengths[i])
            assert (batch["segment_ids"][r, at:at + n] == s).all()
            assert list(batch["positions"][r, at:at + n]) == list(range(n))
            targets = batch["targets"][r, at:at + n][batch["weights"][r, at:at + n] > 0]
            assert list(targets) == [*completions[i], eos]  # the completion, then EOS
            at += n
        assert (batch["segment_ids"][r, at:] == 0).all() and (batch["weights"][r, at:] == 0).all()
    # a packed row's logits equal those of each of its examples alone
    cfg = resolve_auto(ModelConfig(d_model=32, n_layers=2, n_heads=2, vocab_size=4096,
                                   max_seq_len=48, dtype="float32"))
    task = CausalLM(cfg)
    params = jax.jit(task.init)(jax.random.PRNGKey(0))
    apply = jax.jit(lambda p, b: task.apply(p, b))
    packed = np.asarray(apply(params, {k: jnp.asarray(v) for k, v in batch.items()}))
    r = max(range(len(rows)), key=lambda j: len(rows[j]))
    assert len(rows[r]) >= 2
    at = 0
    for i in rows[r]:
        alone = make_rows(data, [[i]], 48, loss_on_prompt=False)
        single = np.asarray(apply(params, {k: jnp.asarray(v) for k, v in alone.items()}))
        n = int(data.lengths[i])
        np.testing.assert_allclose(packed[r, at:at + n], single[0, :n], atol=1e-5)
        at += n
    waste = padding_waste(data, rows, 48)
    assert 0 <= waste < 1 - sum(data.lengths) / (12 * 48)  # less padding than one per row


def test_loss_on_prompt_weights_every_target(tokenizer):
    data = encoded(reverse_task(4, 0), tokenizer)
    batch = make_rows(data, [[0], [1, 2], [3]], 48, loss_on_prompt=True)
    assert batch["weights"].sum() == sum(data.lengths)
    assert ((batch["weights"] > 0) == (batch["segment_ids"] > 0)).all()


def test_a_long_prompt_loses_its_beginning_or_is_refused(tokenizer):
    rows = [{"prompt": " ".join(["word"] * 60) + " end", "completion": " done"}]
    data = encoded(rows, tokenizer, max_length=16)
    assert data.truncated == 1 and len(data.ids[0]) == 17  # max_length inputs + 1
    prompt = tokenizer.decode(list(data.ids[0][1:data.prompt_lens[0]]))
    assert prompt.endswith("word end")  # the end of the prompt is kept
    assert tokenizer.decode(list(data.ids[0][data.prompt_lens[0]:-1])) == " done"
    with pytest.raises(DataError, match="prompt_truncation=left"):
        encoded(rows, tokenizer, max_length=16, truncation="refuse")
    long = [{"prompt": "hi", "completion": " ".join(["word"] * 40)}]
    with pytest.raises(DataError, match="its completion is .* tokens"):
        encoded(long, tokenizer, max_length=16)


def test_bad_columns_and_empty_completions_are_one_line(tokenizer):
    with pytest.raises(DataError, match="completion_column='answer' is not a column"):
        encoded([{"prompt": "a", "completion": "b"}], tokenizer, completion_column="answer")
    with pytest.raises(DataError, match="1 empty completion"):
        encoded([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": " "}],
                tokenizer)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return pretrain(tmp_path_factory.mktemp("pretrain") / "run")


def test_a_decoder_learns_the_task_from_the_cli_and_its_run_generates(backbone, tmp_path,
                                                                        capsys):
    data = write_task(tmp_path / "data")
    run = tmp_path / "run"
    args = ["finetune", "finetune.problem=generate", f"finetune.backbone={backbone}",
            f"finetune.run_dir={run}", f"finetune.data.path={data}", "finetune.epochs=6",
            "finetune.batch_size=8", "finetune.max_length=16", "finetune.lr=3e-3",
            "logging.progress=false", "--json"]
    assert main(args) == 0
    out = capsys.readouterr()
    result = last_json(out.out)
    history = json.loads((run / "report.json").read_text())["history"]
    first, last = history[0]["loss"], history[-1]["loss"]
    assert last < 0.3 * first, history  # the completions are learned
    assert result["split"] == "test" and result["perplexity"] < 2
    assert result["exact_match"] > 0.9 and result["rouge_l"] > 0.9  # greedy completions, scored
    report = json.loads((run / "report.json").read_text())
    assert len(report["predictions"]) == 24 and "predictions" not in result
    assert {"prompt", "completion", "reference", "finish_reason"} == set(report["predictions"][0])
    assert "rouge_l" in history[0]  # every epoch scores generated validation completions
    assert "packed into" in out.err + out.out and "padding" in out.err + out.out
    saved = json.loads((run / "config.json").read_text())
    assert saved["finetune"]["problem"] == "generate" and saved["model"]["dtype"] != "auto"
    # the run is a language model: jaxlm generate continues a prompt with it
    assert main(["generate", str(run), "the colour of cherry is", "what colour is a mango?",
                 "--temperature", "0", "--max-new-tokens", "8", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [(r["completion"], r["finish_reason"]) for r in rows] == [(" red", "eos"),
                                                                     (" orange", "eos")]
    # jaxlm predict: one completion per prompt, in order (the best checkpoint, greedy)
    assert main(["predict", str(run), "banana =>", "the colour of grape is", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert rows == [{"prompt": "banana =>", "completion": " yellow", "finish_reason": "eos"},
                    {"prompt": "the colour of grape is", "completion": " purple",
                     "finish_reason": "eos"}]
    # jaxlm evaluate: a prompt/completion file scored as the run scored its test split
    assert main(["evaluate", str(run), "--file", str(data / "test.jsonl"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["loss"] == pytest.approx(result["loss"], rel=1e-4)
    assert scored["exact_match"] == result["exact_match"] and scored["examples"] == 24


def test_generate_of_an_encoder_is_refused(tmp_path, capsys):
    data = write_task(tmp_path / "data", 16, 4)
    code = main(["finetune", "finetune.problem=generate", "finetune.backbone=none",
                 "model.family=bert", "data.mode=mlm", f"finetune.run_dir={tmp_path / 'run'}",
                 f"finetune.data.path={data}", "logging.progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and "needs a decoder backbone" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # the run directory made for it is removed again


def test_text_scores_follow_squad_rouge_score_and_sacrebleu():
    assert normalize("The  Cat, sat!") == "cat sat"
    assert exact_match("the cat", "Cat.") == 1.0 and exact_match("a dog", "cat") == 0.0
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)  # P 1, R 2/3
    scores = score(["the cat sat on the mat", "hello"], ["a cat sat on a rug", "hello"])
    assert scores["exact_match"] == 0.5 and scores["chrf"] < 100
    assert scores["rouge_l"] == pytest.approx((0.5 + 1) / 2)  # LCS "cat sat on": 3 of 6 words
    assert score(["same words here"], ["same words here"])["chrf"] == pytest.approx(100)


def test_the_fine_tuning_cli_loads_the_text_scorers_only_when_it_scores_text():
    # rouge-score brings nltk, scipy.stats and scikit-learn: ~100 MB of a classification
    # fine-tune's resident memory when it was imported with the module
    code = ("import sys, jaxlm.cli, jaxlm.finetune.main; "
            "print(sorted({'nltk', 'rouge_score', 'sacrebleu', 'sklearn'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("overrides,message", [
    (["finetune.eval_metric=rouge_l"], "applies to finetune.problem=generate"),
    (["finetune.problem=generate", "finetune.eval_metric=macro_f1"], "use loss, exact_match"),
    (["finetune.problem=generate", "finetune.eval_metric=f1", "finetune.eval_samples=0"],
     "generates none"),
])
def test_generation_metrics_only_where_completions_are_generated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TALK = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."}]


def test_conversations_render_to_a_prompt_and_the_last_assistant_turn(tokenizer, tmp_path):
    assert render(TALK, DEFAULT, "row 0") == (
        "<|system|>\nBe terse.\n<|user|>\nHi!\n<|assistant|>\n", "Hello.")
    assert render(TALK, CHATML, "row 0") == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\n", "Hello.<|im_end|>\n")
    assert user_prompt("Hi!", DEFAULT) == "<|user|>\nHi!\n<|assistant|>\n"
    # a Hugging Face directory's template is found; none there means the default
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    assert template_of(tmp_path) == CHATML and template_of(tmp_path / "x") == DEFAULT
    data = encoded([{"messages": TALK}], tokenizer, messages_column="messages")
    assert data.prompts[0].endswith("<|assistant|>\n") and data.completions[0] == "Hello."
    with pytest.raises(DataError, match="unknown role 'robot'"):
        render([{"role": "robot", "content": "x"}, TALK[2]], DEFAULT, "row 3")
    with pytest.raises(DataError, match="no assistant turn"):
        render(TALK[:2], DEFAULT, "row 4")
    silent = "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}{% endif %}" \
             "{% endfor %}"
    with pytest.raises(DataError, match="renders no assistant turn"):
        render(TALK, silent, "row 5")


@pytest.mark.slow
def test_a_chat_run_learns_its_assistant_turns_and_predict_takes_user_turns(backbone, tmp_path,
                                                                           capsys):
    rows = [{"messages": [{"role": "user", "content": r["prompt"]},
                          {"role": "assistant", "content": r["completion"].strip()}]}
            for r in colour_task(240, 0)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert main(["finetune", "finetune.problem=generate", f"finetune.backbone={backbone}",
                 f"finetune.run_dir={run}", f"finetune.data.path={tmp_path / 'chat.jsonl'}",
                 "finetune.data.messages_column=messages", "finetune.epochs=4",
                 "finetune.batch_size=8", "finetune.max_length=32", "finetune.lr=3e-3",
                 "finetune.eval_samples=8", "logging.progress=false", "--json"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["exact_match"] > 0.9, result
    assert json.loads((run / "config.json").read_text())["finetune"]["chat_template"] == DEFAULT
    assert main(["predict", str(run), "the colour of lemon is", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row == {"prompt": "the colour of lemon is", "completion": "pale",
                   "finish_reason": "eos"}
