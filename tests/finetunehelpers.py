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


FRUIT = "apple banana cherry grape lemon mango olive peach pear plum".split()
COLOUR = {"apple": "green", "banana": "yellow", "cherry": "red", "grape": "purple",
          "lemon": "pale", "mango": "orange"}


def reverse_task(n: int, seed: int) -> list[dict]:
    """Prompt/completion pairs of varied lengths: three words, reversed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w = rng.sample(FRUIT, 3)
        rows.append({"prompt": f"reverse: {' '.join(w)} =>",
                     "completion": " " + " ".join(reversed(w))})
    return rows


def colour_task(n: int, seed: int) -> list[dict]:
    """A task a tiny model learns in a few epochs: a fruit's colour, asked in a few ways."""
    rng = random.Random(seed)
    asks = ("the colour of {} is", "what colour is a {}?", "{} =>")
    fruit = sorted(COLOUR)
    return [{"prompt": rng.choice(asks).format(f), "completion": f" {COLOUR[f]}"}
            for f in (rng.choice(fruit) for _ in range(n))]


def write_splits(directory: Path, make, n_train: int, n_eval: int) -> Path:
    """``make(n, seed)``'s rows as train / validation / test jsonl files (seeds 0, 1, 2)."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("validation", n_eval, 1), ("test", n_eval, 2)):
        (directory / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in make(n, seed)))
    return directory


def write_task(directory: Path, n_train: int = 240, n_eval: int = 24) -> Path:
    """The colour task as train / validation / test jsonl files (prompt, completion)."""
    return write_splits(directory, colour_task, n_train, n_eval)


FILLER_SENTENCES = ("It rained on the farm.", "The market opened early.", "Nobody came back.",
                    "A cart stood by the gate.", "The trees were old.")


def qa_task(n: int, seed: int, facts: int = 4) -> list[dict]:
    """Extractive QA a tiny encoder learns: which colour the context gives the asked fruit."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        fruit = rng.sample(sorted(COLOUR), facts)
        parts = [f"The {f} is {COLOUR[f]}." for f in fruit] + rng.sample(FILLER_SENTENCES, 2)
        rng.shuffle(parts)
        context = " ".join(parts)
        asked = rng.choice(fruit)
        sentence = f"The {asked} is {COLOUR[asked]}."
        start = context.index(sentence) + len(f"The {asked} is ")
        rows.append({"question": f"What colour is the {asked}?", "context": context,
                     "answers": {"text": [COLOUR[asked]], "answer_start": [start]}})
    return rows


def write_qa(directory: Path, n_train: int = 320, n_eval: int = 32) -> Path:
    """The QA task as train / validation / test jsonl files (question, context, answers)."""
    return write_splits(directory, qa_task, n_train, n_eval)


def finetune_args(run_dir: Path, backbone: Path | str, data: Path | str, *extra: str) -> list[str]:
    return ["finetune", f"finetune.backbone={backbone}", f"finetune.run_dir={run_dir}",
            f"finetune.data.path={data}", "finetune.epochs=1", "finetune.batch_size=8",
            "finetune.max_length=32", "logging.progress=false", *extra, "--json"]


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])
