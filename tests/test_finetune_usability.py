"""Fine-tuning that is easy to live with: checkpoints at epoch ends (best and latest kept,
their size said once), progress bars on evaluation, a readable report for many classes."""

from __future__ import annotations

import numpy as np
import pytest
from finetunehelpers import finetune_args, pretrain, synthetic_dir

from jaxlm.checkpoint.reader import SavedRun
from jaxlm.cli import main
from jaxlm.tasks.classification import format_report


@pytest.mark.slow
def test_fine_tuning_saves_at_epoch_ends_keeping_best_and_latest(tmp_path, capsys):
    backbone = pretrain(tmp_path / "pre")
    data = synthetic_dir(tmp_path / "data", n_train=48, n_eval=16)
    capsys.readouterr()
    args = ("finetune.epochs=3", "logging.progress=true")
    assert main(finetune_args(tmp_path / "run", backbone, data, *args)) == 0
    out, err = capsys.readouterr()
    with SavedRun(tmp_path / "run" / "checkpoints") as run:
        steps, best = run.steps(), run.best_step()
    assert steps[-1] == 18 and len(steps) <= 2 and best in steps  # 6 steps an epoch
    assert all(s % 6 == 0 for s in steps)  # epoch ends only
    assert out.count("checkpoint: each save writes") == 1
    assert "eval validation" in err and "eval test" in err  # progress bars
    # predict reads JSON lines (multi-line texts), one output per object, in order
    import json
    texts = ["apple pear\nand more words", "zebra lion\nnew line", "ocean\n\ntide"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n"
                                               for i, t in enumerate(texts)))
    assert main(["predict", str(tmp_path / "run"), "--file", str(tmp_path / "in.jsonl"),
                 "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in rows] == texts
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    assert main(["predict", str(tmp_path / "run"), "--file", str(tmp_path / "bad.jsonl")]) != 0
    err = capsys.readouterr().err
    assert "JSON line 2: no string 'text' field (it has body)" in err
    # a cadence the user asks for is kept, with as many checkpoints as asked
    assert main(finetune_args(tmp_path / "every", backbone, data, "checkpoint.every=4",
                              "checkpoint.keep=10")) == 0
    with SavedRun(tmp_path / "every" / "checkpoints") as run:
        assert run.steps() == [4, 6]


def test_report_of_many_classes_lists_top_confusions_not_the_matrix():
    names = [f"class{i}" for i in range(12)]
    cm = np.eye(12, dtype=int) * 5
    cm[3, 7], cm[1, 2] = 9, 4
    text = format_report(cm, names)
    assert "most frequent confusions" in text and "12 x 12 matrix is in report.json" in text
    lines = text.splitlines()
    first = lines.index(next(x for x in lines if "most frequent" in x)) + 1
    assert lines[first].split() == ["9", "class3", "->", "class7"]
    assert max(len(x) for x in lines) < 100
    small = format_report(np.eye(3, dtype=int), ["a", "b", "c"])
    assert "confusion (rows: true, columns: predicted)" in small


@pytest.mark.slow
def test_the_cli_keeps_compiled_steps_in_a_persistent_cache(tmp_path):
    import os
    import subprocess
    import sys

    from finetunehelpers import TINY

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # (tiny steps compile fast)
    for cache, extra in (("on", []), ("off", ["compile.cache=false"])):
        env["XDG_CACHE_HOME"] = str(tmp_path / cache)
        proc = subprocess.run(
            [sys.executable, "-m", "jaxlm.cli", "train", TINY, "train.steps=2",
             f"train.run_dir={tmp_path / cache / 'run'}", "train.sample_tokens=0",
             "train.eval_batches=1", "logging.progress=false", *extra],
            env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "compiling the train step for batches of" in proc.stdout
    assert any((tmp_path / "on" / "jaxlm" / "xla").iterdir())
    assert not (tmp_path / "off" / "jaxlm" / "xla").exists()
