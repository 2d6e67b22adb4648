"""Per-host sharding across real processes, and global arrays from local batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datahelpers import decode_docs, make_texts, pipeline, take, write_shards

from jaxlm.data.sources import DataWarning

TESTS = Path(__file__).parent
_WORKER = """
import json, sys
from datahelpers import decode_docs, pipeline, take
rank, world, glob = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
p = pipeline(glob, process_index=rank, process_count=world, shuffle=True, repeat=False,
             shuffle_rows=0)  # rows in order, so documents can be decoded
print(json.dumps(decode_docs(take(p))))
"""


def test_two_processes_get_disjoint_shards_that_cover_the_data(tmp_path):
    texts = make_texts(80, seed=21, max_words=50)
    write_shards(tmp_path, texts, 4)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", USE_TORCH="0", JAX_PLATFORMS="cpu")
    args = [sys.executable, "-c", _WORKER, "RANK", "2", str(tmp_path / "*.jsonl")]
    procs = [subprocess.Popen([str(r) if a == "RANK" else a for a in args], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "not a multiple" not in err  # 4 files over 2 processes: no warning
    docs = [json.loads(out) for out, _ in outs]
    assert docs[0] and docs[1]
    assert not set(docs[0]) & set(docs[1])
    assert sorted(docs[0] + docs[1]) == sorted(texts)


def test_shards_not_divisible_by_processes_warn_and_still_partition(tmp_path):
    texts = make_texts(45, seed=22, max_words=30)
    write_shards(tmp_path, texts, 3)
    seen = []
    for rank in range(2):
        with pytest.warns(DataWarning, match="not a multiple of 2 processes"):
            p = pipeline(str(tmp_path / "*.jsonl"), process_index=rank, process_count=2,
                         shuffle_rows=0)
        seen.append(decode_docs(take(p)))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(texts)


def test_to_global_assembles_the_batch_with_its_sharding(tmp_path):
    import jax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    from jaxlm.data.pipeline import to_global

    assert jax.device_count() == 8
    write_shards(tmp_path, make_texts(30, seed=23), 2)
    with pipeline(str(tmp_path / "*.jsonl"), local_batch=8, repeat=True) as p:
        batch = next(p)
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
    out = to_global(batch, sharding)
    assert set(out) == set(batch)
    for k, v in out.items():
        assert v.shape == batch[k].shape and v.dtype == batch[k].dtype and v.sharding == sharding
        np.testing.assert_array_equal(np.asarray(v), batch[k])
        assert len(v.addressable_shards) == 8 and v.addressable_shards[0].data.shape[0] == 1
