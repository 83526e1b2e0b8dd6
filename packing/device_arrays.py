"""Host batches -> global `jax.Array`s on a device mesh, sharded over data and sequence axes.

The batch dimension is split over the data axes (`('dp', 'fsdp')`) and the sequence dimension
over `'sp'` (sequence parallelism for RingAttention); every host passes only its own rows (its
loader shard) and JAX assembles the global arrays. JAX is imported when called, so `lwmkit.packing`
stays importable without it.

Example, 8 devices as dp=2 x sp=4, a host batch of [4, 4096]:
    arrays = to_global_arrays(batch, mesh)      # arrays["tokens"].shape == (4 * hosts, 4096)
    arrays["tokens"].sharding.spec              # PartitionSpec(('dp', 'fsdp'), 'sp')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def to_global_arrays(
    batch: Mapping[str, np.ndarray],
    mesh: Any,
    batch_axes: Sequence[str] = ("dp", "fsdp"),
    seq_axis: str | Sequence[str] | None = "sp",
) -> dict[str, Any]:
    """Turns this host's numpy batch into global jax.Arrays sharded on `mesh`.

    Args:
      batch: field -> [local_batch, seq] (or [local_batch]) arrays, as `make_loader` yields.
      mesh: a `jax.sharding.Mesh` whose axis names include `batch_axes` (and `seq_axis`).
      batch_axes: mesh axes the batch dimension is split over; those the mesh lacks are skipped.
      seq_axis: mesh axis the sequence dimension is split over, or several (("sp", "ulysses"):
        2D sequence parallelism, the first the slowest); those the mesh lacks are skipped (None or
        none present: replicated).

    Returns:
      field -> global jax.Array.

    Raises:
      ValueError: if a dimension does not divide by its mesh axes.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    names = set(mesh.axis_names)
    data = tuple(a for a in batch_axes if a in names)
    seq_axes = tuple(a for a in ((seq_axis,) if isinstance(seq_axis, str) else seq_axis or ()) if a in names)
    seq = seq_axes[0] if len(seq_axes) == 1 else seq_axes or None
    seq_size = int(np.prod([mesh.shape[a] for a in seq_axes]))
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        spec = PartitionSpec(data or None, seq) if value.ndim >= 2 else PartitionSpec(data or None)
        if value.ndim >= 2 and seq is not None and value.shape[1] % seq_size:
            raise ValueError(f"{key}: sequence length {value.shape[1]} does not divide by mesh axes {seq!r} ({seq_size})")
        out[key] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), value)
    return out
