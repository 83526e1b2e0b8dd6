"""Mesh specs without JAX: the axis names and the sizes a spec asks for.

`lwm-train` reads its stages' mesh specs before JAX starts (to ask XLA for enough CPU devices,
`cpu_devices.py`), so parsing them must not import JAX; `mesh.make_mesh` builds the mesh itself.

Example:
    >>> mesh_sizes("1,-1,1,4"), mesh_sizes({"sp": 2}), devices_needed("2,1,1,4,2")
    ([1, -1, 1, 4, 1], [1, 1, 1, 2, 1], 16)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod

AXES = ("dp", "fsdp", "tp", "sp", "ulysses")


def devices_needed(dims: str | Mapping[str, int] | Sequence[int]) -> int:
    """The fewest devices a mesh spec fits: the product of its sizes, a -1 counting as 1.

    Raises:
      ValueError: for a malformed spec (as `make_mesh`).
    """
    return prod(s for s in mesh_sizes(dims) if s != -1)


def mesh_sizes(dims: str | Mapping[str, int] | Sequence[int]) -> list[int]:
    """The five sizes (dp, fsdp, tp, sp, ulysses) of a mesh spec, one of them possibly -1; a spec of
    four (LWM's mesh_dim) has no Ulysses axis (ulysses=1).

    Raises:
      ValueError: for a spec that is not four or five ints (string, sequence) or names an unknown axis.
    """
    if isinstance(dims, str):
        try:
            sizes = [int(p) for p in dims.split(",")]
        except ValueError as e:
            raise ValueError(
                f"mesh dims {dims!r}: expected four or five comma-separated ints like '1,-1,1,1' "
                f"or '1,-1,1,4,2' (dp, fsdp, tp, sp[, ulysses])"
            ) from e
    elif isinstance(dims, Mapping):
        unknown = sorted(set(dims) - set(AXES))
        if unknown:
            raise ValueError(
                f"mesh dims {dict(dims)}: unknown axes {unknown}; axes are {list(AXES)}"
            )
        sizes = [int(dims.get(a, 1)) for a in AXES]
    else:
        sizes = [int(s) for s in dims]
    if len(sizes) == len(AXES) - 1:
        sizes.append(1)  # LWM's four-axis mesh_dim: no Ulysses axis
    if len(sizes) != len(AXES) or sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"mesh dims {dims!r}: need {len(AXES) - 1} or {len(AXES)} sizes >= 1 for {AXES}, at most one -1"
        )
    return sizes
