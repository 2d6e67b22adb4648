"""LoRA fine-tuning: adapters beside a frozen backbone, for every objective; only the
trained part in the optimizer state and the checkpoints; exact resume; merged export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from finetunehelpers import finetune_args, pretrain, synthetic_dir, write_qa, write_task

from jaxlm.checkpoint.compat import flat_shapes
from jaxlm.checkpoint.reader import SavedRun
from jaxlm.cli import main

LORA = ("finetune.lora.rank=4", "finetune.lora.alpha=8")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return pretrain(tmp_path_factory.mktemp("lora") / "pre")


def leaves(tree) -> dict:
    return {jax.tree_util.keystr(kp, simple=True, separator="/"): x
            for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(x) for k, x in leaves(tree).items()}


def saved(run_dir: Path) -> tuple[dict, dict]:
    """(saved params, saved optimizer state) shapes of the run's latest checkpoint."""
    with SavedRun(run_dir / "checkpoints") as run:
        meta = run.state_metadata(run.steps()[-1])
    return flat_shapes(meta["params"]), flat_shapes(meta["opt_state"])


def finetune(tmp: Path, run: str, backbone: Path, data: Path, *extra: str, capsys=None):
    code = main(finetune_args(tmp / run, backbone, data, *extra))
    assert code == 0
    if capsys is not None:
        out = capsys.readouterr().out.strip().splitlines()[-1]
        return json.loads(out)
    return None


ARGS = (*LORA, "finetune.epochs=2", "finetune.lr=1e-2", "finetune.lora.dropout=0.1",
        "checkpoint.every=4")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, backbone) -> tuple[Path, Path, dict]:
    """(run dir, data dir, its --json result): a LoRA classification run, saved every 4 steps."""
    tmp = tmp_path_factory.mktemp("lora_run")
    data = synthetic_dir(tmp / "data", n_train=96)
    code = main(finetune_args(tmp / "run", backbone, data, *ARGS))
    assert code == 0
    return tmp / "run", data, json.loads(
        (tmp / "run" / "report.json").read_text())


def test_lora_classification_trains_adapters_and_head_only(lora_run, backbone):
    run_dir, _, result = lora_run
    params, opt = saved(run_dir)
    # checkpoints: adapters (on query/key/value/out of both blocks) and the head, nothing else
    assert params and all(k.split("/")[-1] in ("lora_a", "lora_b") or k.startswith("head/")
                          for k in params), sorted(params)
    assert sum(k.endswith("lora_a") for k in params) == 4 * 2
    # optimizer state: the same (beside its step counters)
    assert all("lora_" in k for k in opt if "backbone" in k) and any("head/" in k for k in opt)
    assert sum("kernel" in k for k in opt) == 2 * 1  # the classifier's, in two moments
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["finetune"]["frozen"] == ["backbone"] and cfg["model"]["lora"]["rank"] == 4
    assert result["accuracy"] > 0.5
    # the frozen backbone is the pretrained one, bit for bit; the adapters moved
    with SavedRun(backbone / "checkpoints") as pre:
        base = pre.params(pre.steps()[-1], jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), pre.param_metadata(pre.steps()[-1])))
    from jaxlm.finetune.predict import load_run
    mine = flat(load_run(run_dir).params)
    for k, v in flat(base["backbone"]).items():
        np.testing.assert_array_equal(mine["backbone/" + k], v)
    assert np.abs(mine["backbone/block_0/attn/query/lora_b"]).max() > 0


def test_lora_resume_after_interruption_is_exact(tmp_path, lora_run, backbone, capsys):
    run_dir, data, full = lora_run
    # the run as a kill -9 after its first checkpoint leaves it: later checkpoints gone
    shutil.copytree(run_dir, tmp_path / "cut")
    (tmp_path / "cut" / "report.json").unlink()
    with SavedRun(tmp_path / "cut" / "checkpoints") as r:
        steps = r.steps()
    for s in steps[1:]:
        shutil.rmtree(tmp_path / "cut" / "checkpoints" / str(s))
    resumed = finetune(tmp_path, "cut", backbone, data, *ARGS, capsys=capsys)
    assert resumed["accuracy"] == full["accuracy"] and resumed["loss"] == full["loss"]


@pytest.mark.slow
def test_lora_generate_and_span(tmp_path, backbone, capsys):
    task = write_task(tmp_path / "gen", n_train=32, n_eval=8)
    finetune(tmp_path, "gen_run", backbone, task, "finetune.problem=generate", *LORA,
             "finetune.eval_samples=0", capsys=capsys)
    params, _ = saved(tmp_path / "gen_run")
    assert params and all(k.split("/")[-1] in ("lora_a", "lora_b") for k in params)
    # the run is a language model for generate and predict (adapters applied, base read back)
    assert main(["generate", str(tmp_path / "gen_run"), "ROMEO:", "--max-new-tokens", "3"]) == 0
    assert main(["predict", str(tmp_path / "gen_run"), "the colour of apple is"]) == 0
    enc = pretrain(tmp_path / "enc", "model.family=bert", "data.mode=mlm")
    qa = write_qa(tmp_path / "qa", n_train=32, n_eval=8)
    finetune(tmp_path, "qa_run", enc, qa, "finetune.problem=span", *LORA,
             "finetune.lora.targets=[attention,mlp]", "finetune.max_length=48",
             "finetune.doc_stride=16", capsys=capsys)
    params, _ = saved(tmp_path / "qa_run")
    assert any(k.endswith("mlp/fc/lora_a") for k in params)
    assert all(k.split("/")[-1] in ("lora_a", "lora_b") or k.startswith("head/") for k in params)


def test_merged_export_equals_adapted_model(tmp_path, lora_run):
    run_dir = lora_run[0]
    assert main(["export", str(run_dir), str(tmp_path / "out")]) == 0
    from safetensors.numpy import load_file
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert not any("lora" in k for k in merged)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model"]["lora"]["rank"] == 0 and cfg["finetune"]["frozen"] is None
    # the merged kernel is W + (alpha / r) A B of the run's latest step
    with SavedRun(run_dir / "checkpoints") as run:
        latest = run.steps()[-1]
    from jaxlm.finetune.predict import load_run
    params = flat(load_run(run_dir, step=latest).params)
    q = "backbone/block_0/attn/query/"
    a, b, w = params[q + "lora_a"], params[q + "lora_b"], params[q + "kernel"]
    np.testing.assert_allclose(merged[q + "kernel"], w + 2.0 * np.einsum("dr,rhk->dhk", a, b),
                               rtol=1e-5, atol=1e-6)
    assert np.abs(merged[q + "kernel"] - w).max() > 1e-4


def test_bad_lora_settings_are_one_line_errors(tmp_path, backbone, capsys):
    data = synthetic_dir(tmp_path / "data", n_train=16)
    code = main(finetune_args(tmp_path / "a", backbone, data, "finetune.lora.rank=4",
                              "finetune.lora.targets=[qkv]"))
    err = capsys.readouterr().err
    assert code != 0 and "'qkv' matches no dense layer" in err and "Traceback" not in err
    code = main(finetune_args(tmp_path / "b", backbone, data, "finetune.lora.rank=4096"))
    err = capsys.readouterr().err
    assert code != 0 and "larger than the layer" in err and "Traceback" not in err
    code = main(finetune_args(tmp_path / "c", backbone, data, "finetune.lora.rank=4",
                              "finetune.from_scratch=true"))
    err = capsys.readouterr().err
    assert code != 0 and "keeps the backbone frozen" in err
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_plan_of_a_finetune_run_shows_what_lora_saves(tmp_path, backbone, capsys):
    import re

    data = synthetic_dir(tmp_path / "data", n_train=16)
    code = main(["plan", f"finetune.backbone={backbone}", f"finetune.data.path={data}",
                 "finetune.lora.rank=4", "finetune.batch_size=8", "finetune.max_length=32",
                 "--devices", "8"])
    out = capsys.readouterr().out
    assert code == 0 and "finetune: single_label" in out, out
    lora, full = out.strip().splitlines()[1:3]
    assert lora.startswith("LoRA rank 4 on attention") and "compare full fine-tuning" in full

    def mib(line: str, what: str) -> float:
        value, unit = re.search(rf"{what} ([\d.]+) (MiB|GiB)", line).groups()
        return float(value) * (1024 if unit == "GiB" else 1)

    assert mib(lora, "optimizer state") < mib(full, "optimizer state") / 10
    assert mib(lora, "checkpoint") < mib(full, "checkpoint") / 10
    trained = float(re.search(r"trains ([\d.]+)M", lora).group(1))
    assert 0 < trained < float(re.search(r"trains ([\d.]+)M", full).group(1)) / 5


@pytest.mark.slow
def test_bf16_frozen_backbone_and_adapters_sharded_like_their_kernels(tmp_path, backbone,
                                                                       capsys):
    from jaxlm.config import load_config
    from jaxlm.finetune.run import setup

    data = synthetic_dir(tmp_path / "data", n_train=32)
    over = [f"finetune.backbone={backbone}", f"finetune.data.path={data}",
            f"finetune.run_dir={tmp_path / 'run'}", "finetune.lora.rank=4",
            "finetune.lora.base_dtype=bfloat16", "finetune.batch_size=8",
            "finetune.max_length=32", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    run, _ = setup(load_config(None, over))
    p, s = leaves(run.state.params), leaves(run.shardings.params)
    q = "backbone/block_0/attn/query/"
    assert p[q + "kernel"].dtype == np.dtype("bfloat16") and p[q + "lora_a"].dtype == np.float32
    assert p["head/classifier/kernel"].dtype == np.float32
    kernel, a, b = (s[q + n].spec for n in ("kernel", "lora_a", "lora_b"))
    assert tuple(a)[0] == tuple(kernel)[0] and tuple(b)[1:] == tuple(kernel)[1:]
    assert any(x is not None for x in tuple(kernel))  # (the mesh does shard the kernel)
    result = finetune(tmp_path, "cli", backbone, data, *over[3:], "finetune.epochs=2",
                      "finetune.lr=1e-2", capsys=capsys)
    assert result["accuracy"] >= 0.5


def test_a_lora_run_whose_base_moved_is_one_line_error(tmp_path, backbone, capsys):
    base = shutil.copytree(backbone, tmp_path / "base")
    data = synthetic_dir(tmp_path / "data", n_train=16, n_eval=8)
    assert main(finetune_args(tmp_path / "run", base, data, *LORA)) == 0
    base.rename(tmp_path / "moved")
    capsys.readouterr()
    code = main(["export", str(tmp_path / "run"), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0 and "holds only the parameters its run trained" in err
    assert "which no longer exists" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()
