"""Build the docstring-summary demo (prompt -> completion): a docstring's body -> its summary line.

Walks the modules and their public functions, classes, methods and properties of CPython's
standard library as installed
(importing only modules that import without side effects; see SKIP), keeps every docstring
written in the PEP 257 form — a one-line summary, a blank line, then a body — whose summary
is a sentence of 3 to 20 words and whose body is 60 to 600 characters of prose (no doctest,
no option or parameter tables), and writes

    {"prompt": "<body>\\n\\nSummary:", "completion": " <summary line>", "name": "<module.qualname>"}

one per line, split by a hash of the name into train / validation / test (8 : 1 : 1), each
sorted by name. Standard library only; deterministic for one Python version (see
PROVENANCE.md for the one used and the files' hashes).

    python jaxlm/assets/docstrings/build_demo.py [OUT_DIR]
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import pkgutil
import re
import sys
import warnings
from pathlib import Path

SKIP = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3",
        "ensurepip", "venv", "pydoc_data", "test", "unittest.test", "ctypes.test", "sqlite3.test",
        "distutils", "__main__", "__phello__", "_", "msilib", "winreg", "winsound", "nturl2path")
MAX_BODY, MIN_BODY = 600, 60
TABLE = re.compile(r"^\s*(-{2,}|={2,}|\w+ +-- |:param|:return|\* |- )", re.M)


def _modules() -> list[str]:
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith(SKIP))
    out = []
    for name in names:
        out.append(name)
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - platform modules that do not import here
            continue
        for info in pkgutil.iter_modules(getattr(module, "__path__", None) or []):
            sub = f"{name}.{info.name}"
            if not info.name.startswith("_") and not sub.startswith(SKIP):
                out.append(sub)
    return out


def _objects(module: object, name: str) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = [(name, module)]  # the module's own docstring too
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isroutine(obj) or inspect.isclass(obj):
            found.append((f"{name}.{attr}", obj))
        if inspect.isclass(obj):
            for m, meth in sorted(vars(obj).items()):
                public = not m.startswith("_")
                if public and (inspect.isroutine(meth) or isinstance(meth, property)):
                    found.append((f"{name}.{attr}.{m}", meth))
    return found


def _example(qualname: str, doc: str | None) -> dict | None:
    if not doc or "\n\n" not in doc:
        return None
    summary, body = doc.split("\n\n", 1)
    summary, body = summary.strip(), " ".join(body.split())
    words = summary.split()
    if "\n" in summary or not 3 <= len(words) <= 20 or not summary.endswith("."):
        return None
    if not MIN_BODY <= len(body) <= MAX_BODY or ">>>" in doc or TABLE.search(doc.split(
            "\n\n", 1)[1]) or not body[0].isalpha():
        return None
    return {"prompt": f"{body}\n\nSummary:", "completion": f" {summary}", "name": qualname}


def build(out_dir: Path) -> dict[str, int]:
    warnings.simplefilter("ignore")
    rows, seen = [], set()
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001
            continue
        for qualname, obj in _objects(module, name):
            row = _example(qualname, inspect.getdoc(obj))
            if row is not None and row["completion"] not in seen:
                seen.add(row["completion"])
                rows.append(row)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for row in sorted(rows, key=lambda r: r["name"]):
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
