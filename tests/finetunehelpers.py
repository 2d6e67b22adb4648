"""Shared by the fine-tuning tests: a tiny pretrained backbone, synthetic labeled sets, and
running the CLI in this process (fast: jax is already imported)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from jaxlm.cli import main

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "pretrain" / "tiny.yaml")
WORDS = {"apple": "apple pear plum fig", "zebra": "zebra lion gnu yak",
         "ocean": "ocean wave tide reef"}
FILLER = "the a of and to in is it that was he for on are with as i his they be at".split()


def pretrain(run_dir: Path, *overrides: str) -> Path:
    """A tiny pretraining run (a few steps) to use as a backbone."""
    code = main(["train", TINY, f"train.run_dir={run_dir}", "train.steps=6", "logging.every=3",
                 "train.sample_tokens=0", "train.eval_batches=1", "logging.progress=false",
                 *overrides])
    assert code == 0
    return run_dir


def synthetic(path: Path, n: int, seed: int = 0, labels: tuple[str, ...] = ("apple", "zebra"),
              extra: dict | None = None) -> Path:
    """A separable task: each text holds words of its class among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 10))]
        words.insert(rng.randint(0, len(words)), rng.choice(WORDS[label].split()))
        rows.append({"text": " ".join(words), "label": label, **(extra or {})})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def synthetic_dir(directory: Path, n_train: int = 96, n_eval: int = 24, **kw) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    synthetic(directory / "train.jsonl", n_train, seed=0, **kw)
    synthetic(directory / "validation.jsonl", n_eval, seed=1, **kw)
    synthetic(directory / "test.jsonl", n_eval, seed=2, **kw)
    return directory


def finetune_args(run_dir: Path, backbone: Path | str, data: Path | str, *extra: str) -> list[str]:
    return ["finetune", f"finetune.backbone={backbone}", f"finetune.run_dir={run_dir}",
            f"finetune.data.path={data}", "finetune.epochs=1", "finetune.batch_size=8",
            "finetune.max_length=32", "logging.progress=false", *extra, "--json"]


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])
