"""Checkpoint integrity: a manifest of file checksums, written once a step is final and
verified before the step is restored.

Orbax's atomic finalize catches a save that never completed, and a truncated file or broken
metadata fails to read; silently changed bytes (a bad disk, a partial copy, a stray write)
do not, and would be trained on. So once a step is committed, process 0 writes
``<step>/jaxlm_manifest.json`` — every file's size and SHA-256 — and before a step is
restored its files are hashed again and compared. A step without a manifest (saved by an
older jaxlm, or interrupted between the commit and the manifest) is restored unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "jaxlm_manifest.json"
_CHUNK = 1 << 20


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(step_dir: Path) -> None:
    """Hash every file of a committed step and write the manifest (atomically)."""
    step_dir = Path(str(step_dir))
    files = {str(p.relative_to(step_dir)): [p.stat().st_size, _sha256(p)]
             for p in _files(step_dir)}
    tmp = step_dir / f".{MANIFEST}.tmp"
    try:
        tmp.write_text(json.dumps({"version": 1, "files": files}))
        os.replace(tmp, step_dir / MANIFEST)
    except OSError:
        tmp.unlink(missing_ok=True)  # (a full disk): no half-written manifest is left
        raise


def has_manifest(step_dir: Path) -> bool:
    return (step_dir / MANIFEST).is_file()


def verify(step_dir: Path) -> str | None:
    """None if every file listed in the manifest is there with its size and checksum (or
    there is no manifest); else what is wrong, in one line."""
    step_dir = Path(str(step_dir))  # (Orbax hands out etils paths)
    path = step_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        listed = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return f"its integrity manifest {path} is unreadable"
    for rel, (size, digest) in sorted(listed.items()):
        f = step_dir / rel
        if not f.is_file():
            return f"file {rel} is missing"
        if f.stat().st_size != size:
            return f"file {rel} has {f.stat().st_size} bytes, the manifest says {size}"
        if _sha256(f) != digest:
            return f"file {rel} does not match its checksum (its bytes changed after saving)"
    return None
