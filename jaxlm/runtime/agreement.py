"""Every process of a run must have resolved the same config; this checks it at start-up.

Several processes of one run are started by hand, by a launcher or by a scheduler, each with
its own command line, so nothing stops one from getting ``train.global_batch=16`` while the
others get 8. Unchecked, such a run either goes to the end with each process feeding its own
idea of the batch (only process 0's config is saved), or, with a different model shape, dies
in the first collective with a message that blames a dead peer. So, right after
``jax.distributed`` starts, every process publishes a digest of its config in the
coordinator's key-value store; process 0 compares them, and on the first mismatch reads that
process's config and names the first key that differs. Process 0 publishes the verdict, every
process reads it and waits at a barrier (so process 0's coordination service outlives the
reads), and then all of them stop with the same one line, or all go on.

Settings that are per process by nature (``distributed.process_id``,
``distributed.local_device_ids``, ``distributed.coordinator_address``, which may be spelled
differently on each host) are left out of the comparison.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

from jaxlm.errors import UserError

PER_PROCESS = (("distributed", "process_id"), ("distributed", "local_device_ids"),
               ("distributed", "coordinator_address"))
_PREFIX = "jaxlm/config_agreement"
OK = "ok"


class ConfigMismatchError(UserError):
    """Processes of one run resolved different configs (one line, exit code 2)."""


class KeyValueStore(Protocol):
    """The part of JAX's distributed runtime client used here (``jax._src.distributed``)."""

    def key_value_set(self, key: str, value: str) -> None: ...
    def blocking_key_value_get(self, key: str, timeout_in_ms: int) -> str: ...
    def wait_at_barrier(self, barrier_id: str, timeout_in_ms: int) -> None: ...


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a JSON dump of :class:`~jaxlm.config.Config`) without per-process keys."""
    out = json.loads(json.dumps(config))
    for section, key in PER_PROCESS:
        out.get(section, {}).pop(key, None)
    return out


def digest(config: dict[str, Any]) -> str:
    """A stable hash of a comparable config (keys sorted)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def first_difference(mine: Any, theirs: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key where ``mine`` and ``theirs`` differ, with both values, or None
    when they are equal. Keys go in ``mine``'s order (the schema's: a setting comes before
    those derived from it, ``model.d_model`` before ``model.d_ff``); a key missing on one
    side shows as ``<unset>``."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in [*mine, *(k for k in theirs if k not in mine)]:
            where = f"{path}.{key}" if path else key
            if key not in mine or key not in theirs:
                return where, mine.get(key, "<unset>"), theirs.get(key, "<unset>")
            found = first_difference(mine[key], theirs[key], where)
            if found is not None:
                return found
        return None
    return None if mine == theirs else (path or "<config>", mine, theirs)


def mismatch_message(index: int, count: int, ours: dict[str, Any],
                     theirs: dict[str, Any]) -> str:
    """The one line for process ``index``'s config ``theirs`` differing from process 0's."""
    key, zero, other = first_difference(ours, theirs) or ("<config>", "?", "?")
    return (f"the {count} processes of this run resolved different configs: {key} is "
            f"{json.dumps(zero)} on process 0 but {json.dumps(other)} on process {index}; "
            "start every process with the same config file and overrides")


def check(config: dict[str, Any], client: KeyValueStore, index: int, count: int,
          timeout_s: float) -> None:
    """Raise :class:`ConfigMismatchError` on every process unless all ``count`` processes
    passed the same ``config`` (see the module docstring). Call once per run, on every
    process, right after ``jax.distributed`` starts."""
    mine = comparable(config)
    ms, want = int(timeout_s * 1000), digest(mine)
    client.key_value_set(f"{_PREFIX}/{index}/digest", want)
    client.key_value_set(f"{_PREFIX}/{index}/config", json.dumps(mine))
    if index == 0:
        verdict = OK
        for other in range(1, count):
            if client.blocking_key_value_get(f"{_PREFIX}/{other}/digest", ms) != want:
                theirs = json.loads(client.blocking_key_value_get(f"{_PREFIX}/{other}/config",
                                                                  ms))
                verdict = mismatch_message(other, count, mine, theirs)
                break
        client.key_value_set(f"{_PREFIX}/verdict", verdict)
    else:
        verdict = client.blocking_key_value_get(f"{_PREFIX}/verdict", ms)
    client.wait_at_barrier(f"{_PREFIX}/read", ms)  # process 0's service outlives every read
    if verdict != OK:
        raise ConfigMismatchError(verdict)
