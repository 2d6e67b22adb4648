"""Build the docstring QA demo (extractive): questions whose answer is a span of a docstring.

From the same CPython standard-library docstrings as the docstring-summary demo (see
``../docstrings/build_demo.py``: the modules it imports, their public functions, classes,
methods and properties), every docstring of at most 1,500 characters gives, with its
whitespace collapsed as the context:

- "What does `NAME` return?" when its summary line reads "Return(s) X." — the answer is X;
- "Which exception can `NAME` raise?" when it says "raise(s) [a|an] SomethingError" (or
  ...Exception / ...Warning) — the answer is the first such name.

Each row is ``{"question", "context", "answers": {"text": [a], "answer_start": [i]}, "name"}``
(SQuAD's format; ``context[i:i + len(a)] == a``). Split by a hash of ``name`` (8 : 1 : 1), so
both questions of one object are in one split; each split sorted by name, then question.
Standard library only; deterministic for one Python version.

    python jaxlm/assets/docstring_qa/build_demo.py [OUT_DIR]
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docstrings"))
from build_demo import _modules, _objects  # noqa: E402  (the summary demo's walk)

MAX_CONTEXT = 1500
RETURNS = re.compile(r"^Returns? (.{8,120}?)\.$")
RAISES = re.compile(r"\b[Rr]aises? (?:an? )?([A-Z][A-Za-z]*(?:Error|Exception|Warning))\b")


def _rows(qualname: str, doc: str | None) -> list[dict]:
    if not doc:
        return []
    context = " ".join(doc.split())
    if len(context) > MAX_CONTEXT:
        return []
    found = []
    summary = " ".join(doc.split("\n\n", 1)[0].split())
    m = RETURNS.match(summary)
    if m:
        found.append((f"What does `{qualname}` return?", m.group(1), m.start(1)))
    m = RAISES.search(context)
    if m:
        found.append((f"Which exception can `{qualname}` raise?", m.group(1), m.start(1)))
    return [{"question": q, "context": context,
             "answers": {"text": [a], "answer_start": [i]}, "name": qualname}
            for q, a, i in found if context[i:i + len(a)] == a]


def build(out_dir: Path) -> dict[str, int]:
    warnings.simplefilter("ignore")
    rows, seen = [], set()
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - platform modules that do not import here
            continue
        for qualname, obj in _objects(module, name):
            for row in _rows(qualname, inspect.getdoc(obj)):
                key = (row["question"], row["context"])
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for row in sorted(rows, key=lambda r: (r["name"], r["question"])):
        bucket = int(hashlib.sha256(row["name"].encode()).hexdigest(), 16) % 10
        splits["validation" if bucket == 8 else "test" if bucket == 9 else "train"].append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for row in items:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {k: len(v) for k, v in splits.items()}


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    print(build(out), "Python", sys.version.split()[0])
