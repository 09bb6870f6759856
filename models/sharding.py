"""Logical axis names → device-mesh axes: the one rules table, and helpers that apply it.

Every parameter carries `logical_axes` metadata (see models/modules.py); activations are annotated with
`constrain(x, names)`. The mesh has three axes, ("data", "fsdp", "tensor"). A logical axis whose size is not
divisible by its mesh axes stays replicated (e.g. SmolLM2's 3 KV heads on tensor=2).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    # parameters
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "lora_rank": None,
}


def make_mesh(
    data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh; one axis may be -1 to take the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, have {len(devices)}"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None, rules=None
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec, dropping mesh axes that do not divide the dimension."""
    rules = RULES if rules is None else rules
    spec, used = [], set()
    for i, name in enumerate(names):
        target = rules.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
            if shape is not None and axes:
                size = int(np.prod([mesh.shape[a] for a in axes]))
                if shape[i] % size:
                    axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules=None) -> nnx.State:
    """NamedShardings for every variable of an nnx State, from its `logical_axes` metadata."""

    def one(v: nnx.Variable) -> NamedSharding:
        shape = np.shape(v.get_value())
        names = getattr(v, "logical_axes", None) or (None,) * len(shape)
        return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def mesh_placer(mesh: Mesh, rules=None):
    """A `models.checkpoint.load_model(place=...)` callback: each weight goes straight onto `mesh` with the
    NamedSharding of its logical axes (only each device's shard is copied from the host array)."""

    def place(path: tuple[str, ...], var: nnx.Variable, arr: np.ndarray) -> jax.Array:
        arr = np.asarray(arr, dtype=var.get_value().dtype)
        names = getattr(var, "logical_axes", None) or (None,) * arr.ndim
        sharding = NamedSharding(mesh, logical_to_spec(names, arr.shape, mesh, rules))
        return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])

    return place


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """with_sharding_constraint by logical names when a mesh is set (jax.set_mesh); identity otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1:
        return x
    spec = logical_to_spec(names, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
