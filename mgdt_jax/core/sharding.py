"""The device mesh, the logical-axis rules, global batch assembly and joining a multi-host job.

This is the one place that maps the logical axis names carried by parameters and activations
(``embed``, ``heads``, ``mlp``, ``batch`` ...) onto the physical mesh axes ``(data, fsdp, tensor)``:

* ``data``: pure data parallelism (parameters replicated, batch split).
* ``fsdp``: the batch is split over it too, and parameters are sharded over their ``embed`` axis
  (ZeRO-3 style: all-gathered for the matmul, gradients reduce-scattered).
* ``tensor``: Megatron-style tensor parallelism over attention heads and the MLP hidden axis.

The mesh uses ``AxisType.Auto`` deliberately: parameters and the batch get explicit shardings at the
jit boundary and XLA's propagation places every intermediate, so the model code stays free of
per-op sharding annotations (Explicit mode would need ``out_sharding=`` on every einsum).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mgdt_jax.core import files
from mgdt_jax.core.config_sections import read_section

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or axes, or None = replicated). Parameters name their axes with these
# (``out_sharding`` metadata: ``transformer.sharded`` and ``transformer.dense``); batches use "batch".
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", None),
    ("patch", None),
    ("position", None),
)


def maybe_initialize_distributed() -> None:
    """Joins a multi-host job when the launcher says there is one; a no-op on one host.

    Must run before any JAX computation. SLURM, Open MPI and Cloud TPU pods are detected by
    ``jax.distributed.initialize()`` itself; a plain launch sets ``JAX_COORDINATOR_ADDRESS``
    (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` on every process
    (JAX reads only the first, so the other two are read here). ValueError (one line) for a process
    count or index that is not a whole number, or an index outside ``0..count - 1``.
    """
    launched_multi_host = any(
        name in os.environ
        for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")
    )
    if not launched_multi_host or jax.distributed.is_initialized():
        return
    if (slurm_tasks := _environment_int("SLURM_NTASKS")) is not None and slurm_tasks <= 1:
        return
    num_processes, process_id = (_environment_int(name) for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))
    if (num_processes is None) != (process_id is None):
        raise ValueError("set both JAX_NUM_PROCESSES and JAX_PROCESS_ID (or neither, where the launcher is detected)")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"JAX_PROCESS_ID={process_id} is outside 0..{num_processes - 1} (JAX_NUM_PROCESSES={num_processes})")
    jax.distributed.initialize(num_processes=num_processes, process_id=process_id)


def _environment_int(name: str) -> int | None:
    """The whole number in environment variable ``name``, None when unset; ValueError (one line) otherwise."""
    if (text := os.environ.get(name)) is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a whole number") from None


FAILURE_BYTES = 1024  # of a process's one-line error, sent to the others


@contextlib.contextmanager
def every_process_or_none() -> Iterator[None]:
    """Runs the block on every process of a multi-host job and makes a failure everyone's.

    A ValueError, OSError or RuntimeError raised in the block on some process is raised on every
    process: as itself where it happened, elsewhere as a ValueError naming the first failed process
    and its error's first line. Without this the failed process exits and the others wait in their
    next collective until it times out, ending in a traceback about the collective. Collective: every
    process must enter the block. On one process it only runs the block.
    """
    error: Exception | None = None
    try:
        yield
    except (ValueError, OSError, RuntimeError) as raised:
        error = raised
    if jax.process_count() > 1:
        line = "" if error is None else files.first_line(error)
        sent = np.frombuffer(line.encode()[:FAILURE_BYTES].ljust(FAILURE_BYTES, b"\0"), np.uint8)
        received = multihost_utils.process_allgather(sent)
        failed = [(index, bytes(row).rstrip(b"\0").decode(errors="replace")) for index, row in enumerate(received)
                  if row.any()]
        if failed and error is None:
            index, line = failed[0]
            raise ValueError(f"process {index} of {jax.process_count()} failed: {line}")
    if error is not None:
        raise error


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1


def mesh_shape(mesh_config: Any, num_devices: int) -> tuple[int, int, int]:
    """Resolves ``(data, fsdp, tensor)`` sizes from a config where at most one size is -1 (= the rest).

    ValueError (one line) for a field that names no mesh axis (``mesh.model``: set in a config file,
    it was ignored, and the run silently data-parallel), a size no mesh can have, or sizes that do not
    use every device.
    """
    if unknown := sorted(set(mesh_config.keys() if hasattr(mesh_config, "keys") else ()) - set(MESH_AXES)):
        raise ValueError(f"mesh.{unknown[0]}: no such mesh axis (the axes are {', '.join(MESH_AXES)}; a model is split "
                         "over tensor, its parameters and optimizer state over fsdp)")
    config = read_section(MeshConfig, mesh_config)
    sizes = [int(getattr(config, axis)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one of {MESH_AXES} may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(size for size in sizes if size != -1)
    if any(size == 0 or size < -1 for size in sizes) or num_devices % known:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {num_devices} devices")
    sizes = [num_devices // known if size == -1 else size for size in sizes]
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} of {num_devices} devices")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the ``(data, fsdp, tensor)`` mesh over all devices (or ``devices``).

    ``mesh_config`` is anything with ``data``, ``fsdp`` and ``tensor`` attributes or keys (missing
    ones default to pure data parallelism).
    """
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None]) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec with LOGICAL_AXIS_RULES (None: replicated).

    ValueError for a name the rules do not know: a misspelt name replicated its axis silently.
    """
    rules = dict(LOGICAL_AXIS_RULES)
    if unknown := [name for name in logical_axes if name is not None and name not in rules]:
        raise ValueError(f"logical axis name {unknown[0]!r} is not one of {', '.join(rules)} (sharding.LOGICAL_AXIS_RULES)")
    return PartitionSpec(*(rules[name] if name is not None else None for name in logical_axes))


def variable_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedShardings for a Flax NNX state from each Variable's logical ``out_sharding`` names.

    Works on concrete or abstract (``jax.ShapeDtypeStruct``) states; unnamed variables are replicated.
    ValueError (one line naming the parameter) for an unknown logical name, more names than the
    array has axes, or an axis the mesh axes it maps to do not divide (e.g. ``embed`` 36 over ``fsdp`` 8).
    """

    def sharding_of(path: tuple, variable: nnx.Variable) -> nnx.Variable:
        logical_axes = variable.get_metadata().get("out_sharding") or ()
        where = "/".join(str(getattr(key, "key", key)) for key in path)
        try:
            spec = logical_to_spec(logical_axes)
        except ValueError as error:
            raise ValueError(f"parameter {where}: {error}") from None
        shape = getattr(variable, "shape", ())
        if len(logical_axes) > len(shape):
            raise ValueError(f"parameter {where}: {len(logical_axes)} axis names {tuple(logical_axes)} for an array of "
                             f"shape {tuple(shape)}; give one name (or None) per axis")
        for size, name, axes in zip(shape, logical_axes, spec):
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            shards = math.prod(mesh.shape[axis] for axis in axes)
            if size % shards:
                raise ValueError(f"parameter {where}: its {name!r} axis of size {size} does not divide over the "
                                 f"mesh's {' x '.join(f'{axis} {mesh.shape[axis]}' for axis in axes)} (config.mesh); "
                                 "change the model's size or the mesh")
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map_with_path(sharding_of, state, is_leaf=lambda node: isinstance(node, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of every batch array: leading (batch) axis over ``data`` x ``fsdp``, rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the global batch from this host's slice of it (the whole batch on one host).

    Every host passes its own ``[B / num_hosts, ...]`` rows; the result is one global array per key,
    sharded over the batch axis.
    """
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }
