"""Extractive question answering (finetune.problem=span): long contexts become overlapping
windows whose labels point at the answer's tokens, the best span is taken over all windows,
missing answers are skipped or refused, and an encoder learns the task from the CLI."""

import json
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
from finetunehelpers import last_json, qa_task, write_qa

from jaxlm.cli import main
from jaxlm.config import LabeledDataConfig, load_config
from jaxlm.data.errors import DataError, DataWarning
from jaxlm.data.tokenizer import load_tokenizer
from jaxlm.finetune.completions import encode_completions
from jaxlm.finetune.labeled import load_splits
from jaxlm.finetune.spans import best_spans, encode_spans, make_span_batch

CONTEXT = ("The trees were old. The grape is purple. A cart stood by the gate. The mango is "
           "orange. Nobody came back. The apple is green. The market opened early.")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("default")


def windows(rows, tokenizer, max_length=24, stride=6, missing="skip"):
    return encode_spans(datasets.Dataset.from_list(rows), "train", "rows", tokenizer,
                        LabeledDataConfig(), max_length, stride, missing)


def test_long_contexts_become_overlapping_windows_labeled_at_the_answer(tokenizer):
    start = CONTEXT.index("orange")
    data = windows([{"question": "What colour is the mango?", "context": CONTEXT,
                     "answers": {"text": ["orange"], "answer_start": [start]}}], tokenizer)
    assert len(data) >= 3 and (data.example == 0).all()  # one question, several windows
    labeled = [w for w in range(len(data)) if tuple(data.labels[w]) != (0, 0)]
    assert labeled  # at least one window holds the whole answer
    for w in range(len(data)):
        assert len(data.ids[w]) <= 24
        s, e = data.labels[w]
        if (s, e) == (0, 0):
            continue
        offs = data.offsets[w]
        assert data.masks[w][s] and data.masks[w][e] and data.types[w][s] == 1
        assert CONTEXT[offs[s, 0]:offs[e, 1]].strip() == "orange"
    # consecutive windows share doc_stride context tokens
    first, second = (np.flatnonzero(data.masks[w][1:]) + 1 for w in (0, 1))
    shared = set(map(tuple, data.offsets[0][first])) & set(map(tuple, data.offsets[1][second]))
    assert len(shared) == 6
    batch = make_span_batch(data, np.asarray([0, 1, -1]), 24)
    assert batch["weights"].tolist() == [1.0, 1.0, 0.0] and batch["span_mask"][2, 0] == 1


def test_the_best_span_over_all_windows_wins_within_the_length_limit(tokenizer):
    data = windows(qa_task(1, 0) + [{"question": "What colour is the apple?",
                                     "context": CONTEXT, "answers": {
                                         "text": ["green"], "answer_start": [-1]}}], tokenizer)
    rng = np.random.default_rng(0)
    logits = [rng.normal(0, 0.1, (len(i), 2)) for i in data.ids]
    target = {}
    for w in range(len(data)):  # make each labeled window's answer the clear favourite
        s, e = data.labels[w]
        if (s, e) != (0, 0):
            logits[w][s, 0] += 5 + w
            logits[w][e, 1] += 5 + w
            target[int(data.example[w])] = data.answers[int(data.example[w])][0]
    found = best_spans(data, logits, max_answer_length=30)
    assert [a for a, _ in found] == [target[0], target[1]] == [data.answers[0][0], "green"]
    # a span longer than max_answer_length is never chosen
    w = next(w for w in range(len(data)) if data.example[w] == 1)
    ctx = np.flatnonzero(data.masks[w][1:]) + 1
    logits = [np.full((len(i), 2), -5.0) for i in data.ids]
    logits[w][ctx[0], 0], logits[w][ctx[-1], 1] = 9.0, 9.0
    answer, _ = best_spans(data, logits, max_answer_length=2)[1]
    assert len(tokenizer.encode(answer, add_special_tokens=False).ids) <= 2


def test_an_answer_missing_from_its_context_is_skipped_or_refused(tokenizer):
    rows = qa_task(3, 0) + [{"question": "Who?", "context": "Nobody came.",
                             "answers": {"text": ["Alice"], "answer_start": [0]}}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = windows(rows, tokenizer)
    assert data.skipped == 1 and len(data.questions) == 3
    assert any(issubclass(w.category, DataWarning) and "does not occur" in str(w.message)
               for w in caught)
    with pytest.raises(DataError, match="missing_answers=skip"):
        windows(rows, tokenizer, missing="refuse")
    with pytest.raises(DataError, match="answers_column='answers' is not a column"):
        windows([{"question": "q", "context": "c"}], tokenizer)


@pytest.mark.slow
def test_an_encoder_learns_extractive_qa_from_the_cli_and_predict_answers(tmp_path, capsys):
    data = write_qa(tmp_path / "data")
    run = tmp_path / "run"
    args = ["finetune", "finetune.problem=span", "finetune.backbone=none", "model.family=bert",
            "data.mode=mlm", "model.n_layers=2", "model.d_model=64", "model.n_heads=2",
            f"finetune.data.path={data}", f"finetune.run_dir={run}", "finetune.max_length=32",
            "finetune.doc_stride=8", "finetune.epochs=6", "finetune.batch_size=16",
            "finetune.lr=1e-3", "logging.progress=false", "--json"]
    assert main(args) == 0
    result = last_json(capsys.readouterr().out)
    history = json.loads((run / "report.json").read_text())["history"]
    assert history[0]["exact_match"] < 0.5 < result["exact_match"], history  # learned
    assert result["f1"] >= result["exact_match"]
    question = {"question": "What colour is the mango?", "context": CONTEXT}
    assert main(["predict", str(run), json.dumps(question), "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["question"] == question["question"] and row["answer"] in CONTEXT
    assert isinstance(row["score"], float)
    assert main(["evaluate", str(run), "--file", str(data / "test.jsonl"), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["exact_match"] == pytest.approx(result["exact_match"], abs=0.07)


def test_span_of_a_decoder_is_refused(tmp_path, capsys):
    data = write_qa(tmp_path / "data", 16, 4)
    code = main(["finetune", "finetune.problem=span", "finetune.backbone=none",
                 f"finetune.run_dir={tmp_path / 'run'}", f"finetune.data.path={data}",
                 "logging.progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and "needs an encoder backbone" in err and "Traceback" not in err


def test_the_shipped_demos_load_whole_and_their_presets_parse(tokenizer):
    """demo:docstring_qa (span) and demo:docstrings (generate): >= 1,000 examples, every
    answer found in its context, every completion non-empty; the finetune presets load."""
    qa = load_splits(LabeledDataConfig(path="demo:docstring_qa"), 0)
    total = 0
    for split, ds in (("train", qa.train), ("validation", qa.validation), ("test", qa.test)):
        data = encode_spans(ds, split, qa.origin[split], tokenizer, LabeledDataConfig(), 128, 32,
                            missing="refuse")
        assert data.skipped == 0
        total += len(data.questions)
    assert total >= 1000
    summaries = load_splits(LabeledDataConfig(path="demo:docstrings"), 0)
    assert len(summaries.train) + len(summaries.validation) + len(summaries.test) >= 1000
    encode_completions(summaries.test, "test", "demo", tokenizer, LabeledDataConfig(), 128)
    for preset in sorted((Path(__file__).parents[1] / "configs" / "finetune").glob("*.yaml")):
        cfg = load_config(preset)
        assert cfg.finetune.problem in ("single_label", "generate", "span"), preset
