"""All sharding knowledge: the device mesh and the logical-axis → mesh-axis rules.

Models name their parameter and activation axes logically (``'embed'``, ``'heads'``,
``'mlp'``, ``'batch'``...); ``mesh.rules`` in the config maps each name to mesh axes. So data
parallel, FSDP, tensor parallel and their combinations are a config change only:

    mesh: {data: 2, fsdp: 2, tensor: 2}   # embed→fsdp, heads/mlp/vocab→tensor, batch→data+fsdp
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxlm.config import Config, ConfigError, MeshConfig, check_devices, resolve_mesh_shape

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def mesh_shapes(cfg: Config, n_devices: int, batch: tuple[str, int] | None = None
                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(ici, dcn)``: the (data, fsdp, tensor) sizes within a slice and across slices.

    ``mesh.data/fsdp/tensor`` (with -1 = the rest) divide each slice's ``n_devices / slices``
    devices; ``mesh.dcn_*`` say how many slices each axis spans. Checks the whole mesh (sizes
    ``ici * dcn``) against the batch and model like a one-slice mesh (one-line ``ConfigError``).
    """
    m = cfg.mesh
    dcn = (m.dcn_data, m.dcn_fsdp, m.dcn_tensor)
    slices = math.prod(dcn)
    if n_devices % slices:
        raise ConfigError(
            f"mesh.dcn_data*dcn_fsdp*dcn_tensor = {slices} slices do not divide the "
            f"{n_devices} devices")
    try:
        ici = resolve_mesh_shape(m, n_devices // slices)
    except ConfigError as e:
        if slices == 1:
            raise
        raise ConfigError(f"within each of the {slices} slices: {e}") from None
    total = dict(zip(MESH_AXES, (i * d for i, d in zip(ici, dcn, strict=True)), strict=True))
    flat = m.model_copy(update={**total, "dcn_data": 1, "dcn_fsdp": 1, "dcn_tensor": 1})
    check_devices(cfg.model_copy(update={"mesh": flat}), n_devices, batch)
    return tuple(ici), dcn


def make_mesh(cfg: Config, devices: Sequence[jax.Device] | None = None,
              batch: tuple[str, int] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over all (or the given) devices, with Auto axis types.

    Checks the config against the device count first (one-line ``ConfigError``); ``batch``
    = (setting, examples per step) of the section run (default ``train.global_batch``).
    Auto axes matter: Linen layers do not support ``jax.make_mesh``'s Explicit default.
    With ``mesh.dcn_*`` > 1 (multi-slice) the mesh is hybrid: each axis is its slices' devices
    side by side, so the fast interconnect (ICI) carries the within-slice part of every
    collective and the data-center network (DCN) only the across-slice part.
    """
    devices = list(devices) if devices is not None else jax.devices()
    ici, dcn = mesh_shapes(cfg, len(devices), batch)
    if math.prod(dcn) == 1:
        return jax.make_mesh(ici, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    return Mesh(hybrid_devices(ici, dcn, devices), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def hybrid_devices(ici: Sequence[int], dcn: Sequence[int],
                   devices: Sequence[jax.Device]) -> np.ndarray:
    """The device array of an ICI x DCN mesh (``mesh_utils.create_hybrid_device_mesh``).

    Slices are what devices call ``slice_index`` (TPU slices); where all devices are in one
    "slice" (GPU and CPU hosts), each process (host) counts as a slice.
    """
    from jax.experimental import mesh_utils

    slices = {getattr(d, "slice_index", None) for d in devices}
    by_slice = len(slices) > 1 or devices[0].platform == "tpu"
    groups = slices if by_slice else {d.process_index for d in devices}
    kind = "slices" if by_slice else "processes (hosts: these devices have no slices)"
    if len(groups) != math.prod(dcn):
        raise ConfigError(
            f"mesh.dcn_data*dcn_fsdp*dcn_tensor = {math.prod(dcn)} but the devices form "
            f"{len(groups)} {kind}; make the dcn_* sizes multiply to {len(groups)}")
    return mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, process_is_granule=not by_slice, allow_split_physical_axes=True)


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
    """Sharding of any batch array ((B,), (B, L), (B, C) ...): rows over the data-parallel
    axes, the other dimensions replicated."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
