"""All sharding knowledge: the device mesh and the logical-axis → mesh-axis rules.

Models name their parameter and activation axes logically (``'embed'``, ``'heads'``,
``'mlp'``, ``'batch'``...); ``mesh.rules`` in the config maps each name to mesh axes. So data
parallel, FSDP, tensor parallel and their combinations are a config change only:

    mesh: {data: 2, fsdp: 2, tensor: 2}   # embed→fsdp, heads/mlp/vocab→tensor, batch→data+fsdp
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxlm.config import Config, MeshConfig, check_devices

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def make_mesh(cfg: Config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over all (or the given) devices, with Auto axis types.

    Checks the config against the device count first (one-line ``ConfigError``).
    Auto axes matter: Linen layers do not support ``jax.make_mesh``'s Explicit default.
    """
    devices = list(devices) if devices is not None else jax.devices()
    shape = check_devices(cfg, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Make ``mesh`` and the logical rules current, for tracing jitted model code."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def logical_rules(mesh_cfg: MeshConfig) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """The config's rules as the tuple-of-tuples Flax expects (lists become tuples)."""
    return tuple((name, tuple(ax) if isinstance(ax, list) else ax) for name, ax in mesh_cfg.rules)


def logical_to_sharding(logical_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """Map a tree of logical PartitionSpecs (or boxed params) to NamedShardings."""
    return nn.logical_to_mesh_sharding(logical_tree, mesh, rules)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Sharding of a (batch, seq) input array: batch over the data-parallel axes."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", None), rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
