"""Fine-tuning bad input: each is one line on stderr, exit 2, and nothing written over;
and a killed fine-tuning run resumes to the uninterrupted metrics."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from finetunehelpers import ROOT, finetune_args, pretrain, synthetic, synthetic_dir, write_task

from jaxlm.cli import main


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return pretrain(tmp_path_factory.mktemp("pretrain") / "run")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_dir(tmp_path_factory.mktemp("data"), n_train=32, n_eval=8)


def one_line_error(capsys, args) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxlm: error: ") and len(err.splitlines()) == 1, err
    return err


def test_bad_data_inputs_are_one_line(backbone, data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("an earlier output")
    base = finetune_args(run, backbone, data)
    cases = {
        "finetune.data.text_column=body": "finetune.data.text_column='body' is not a column",
        "finetune.data.label_column=tag": "finetune.data.label_column='tag' is not a column",
        "finetune.num_labels=3": "finetune.num_labels=3 but the training data has 2 labels",
    }
    for override, expected in cases.items():
        assert expected in one_line_error(capsys, [*base[:-1], override, "--json"])
    unseen = tmp_path / "unseen.jsonl"
    synthetic(unseen, 6, labels=("apple", "ocean"))
    err = one_line_error(capsys, [*base[:-1], f"finetune.data.test={unseen}", "--json"])
    assert "labels not seen in training: ocean" in err
    mixed = synthetic_dir(tmp_path / "mixed", n_train=32, n_eval=8)  # JSON keeps 1 and "1"
    rows = [json.loads(line) for line in (mixed / "train.jsonl").read_text().splitlines()]
    rows[0]["label"] = 1  # apart; as classes they would merge
    (mixed / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    err = one_line_error(capsys, [*base[:-1], f"finetune.data.path={mixed}", "--json"])
    assert "mixes numbers and strings (e.g. 1 and '" in err, err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    err = one_line_error(capsys, [*base[:-1], f"finetune.data.validation={empty}", "--json"])
    assert "the validation split" in err and "is empty" in err
    assert sorted(p.name for p in run.iterdir() if p.name != "logs") == ["keep.txt"]
    assert (run / "keep.txt").read_text() == "an earlier output"


def test_bad_backbones_are_one_line(backbone, data, tmp_path, capsys, monkeypatch):
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("x")
    err = one_line_error(capsys, finetune_args(tmp_path / "r", stray, data))
    assert "is not a run directory, a checkpoint step directory or a `jaxlm export`" in err
    err = one_line_error(capsys, finetune_args(tmp_path / "r", backbone, data,
                                               "model.n_layers=3"))
    assert "model.n_layers=3 (backbone: 2)" in err
    monkeypatch.chdir(tmp_path)  # no runs/default here: the no-argument command explains
    err = one_line_error(capsys, ["finetune"])
    assert "finetune.backbone=runs/default: no such directory; run `jaxlm train` first" in err
    err = one_line_error(capsys, ["predict", str(backbone), "some text"])
    assert "is a pretraining run: it has no classification head" in err


def _jaxlm(args, **kw):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.Popen([sys.executable, "-m", "jaxlm.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["single_label", "generate"])
def test_kill9_then_resume_gives_the_uninterrupted_metrics(problem, data, tmp_path):
    extra = ["finetune.head_dropout=0.1"]
    if problem == "generate":  # packed rows of the colour task, 8 steps per epoch as well
        data = write_task(tmp_path / "data", 64, 8)
        extra = ["finetune.problem=generate", "finetune.max_length=12", "data.seq_len=12",
                 "model.max_seq_len=12", "model.dropout=0.1"]

    def args(run):
        return finetune_args(run, "none", data, "finetune.epochs=2", "finetune.batch_size=4",
                             "checkpoint.every=3", "logging.every=1", "model.d_model=32",
                             "model.n_layers=1", "model.n_heads=2", *extra,
                             "checkpoint.async_save=false")

    ref = _jaxlm(args(tmp_path / "ref"))
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-2000:]
    killed = _jaxlm(args(tmp_path / "run"))
    deadline = time.time() + 300
    while not (tmp_path / "run" / "checkpoints" / "6").is_dir():  # mid-epoch 1 (8 steps)
        assert killed.poll() is None and time.time() < deadline, killed.stderr.read()[-2000:]
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = _jaxlm(args(tmp_path / "run"))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed from" in out + err
    a = json.loads((tmp_path / "ref" / "report.json").read_text())
    b = json.loads((tmp_path / "run" / "report.json").read_text())
    assert a["history"] == b["history"] and a["loss"] == b["loss"]

    def losses(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    ref_losses, run_losses = losses(tmp_path / "ref"), losses(tmp_path / "run")
    steps = max(ref_losses)
    assert set(run_losses) == set(ref_losses) == set(range(1, steps + 1))  # every step logged
    assert steps >= 12
    assert all(run_losses[s] == ref_losses[s] for s in run_losses)
