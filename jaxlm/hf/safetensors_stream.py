"""Write a safetensors file one tensor at a time.

``safetensors.numpy.save_file`` needs every tensor in memory at once; a converted model need
not be. The format is simple — an 8-byte little-endian header length, a JSON header of
names, dtypes, shapes and byte offsets (padded to 8 bytes), then the raw little-endian data —
so the header is written from the shapes first and each tensor is produced, written and
dropped in turn. The result is read back by the `safetensors` library like any other file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np

CODES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16",
         np.dtype(np.float16): "F16"}


def write_safetensors(path: str | Path, tensors: dict[str, tuple[tuple[int, ...], np.dtype]],
                      produce: Callable[[str], np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name → (shape, dtype)) to ``path``; ``produce(name)`` gives each
    array when its turn comes. Written to a temporary name, then renamed."""
    header: dict[str, object] = {"__metadata__": metadata or {}}
    offset = 0
    for name, (shape, dtype) in tensors.items():
        size = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {"dtype": CODES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, (shape, dtype) in tensors.items():
            x = np.ascontiguousarray(produce(name), dtype=np.dtype(dtype).newbyteorder("<"))
            if x.shape != tuple(shape):
                raise ValueError(f"{name}: produced {x.shape}, declared {tuple(shape)}")
            f.write(x.tobytes())
    os.replace(tmp, path)
