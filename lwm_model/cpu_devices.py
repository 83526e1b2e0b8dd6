"""Virtual CPU devices for a mesh, arranged before JAX starts its backend.

XLA's CPU backend makes one device per host unless `--xla_force_host_platform_device_count=N` is in
XLA_FLAGS when the backend starts (the first `jax.devices()` or computation, not `import jax`).
`lwm-train` asks for what its stages' meshes need, so `lwm-train tiny-cpu ...` (dp=2 x sp=4) runs on a
CPU-only machine as written. A device count the user chose (in XLA_FLAGS or JAX_NUM_CPU_DEVICES)
is left alone; a mesh that then does not fit says what to set (`mesh.make_mesh`). On a machine with
accelerators the flag changes only the CPU backend, which the trainer does not use.

Example (before anything has used JAX):
    >>> env = {"XLA_FLAGS": "--xla_dump_to=/tmp/dump"}
    >>> request_cpu_devices(8, env)
    '--xla_force_host_platform_device_count=8'
    >>> env["XLA_FLAGS"]                 # the user's other flags are kept
    '--xla_dump_to=/tmp/dump --xla_force_host_platform_device_count=8'
    >>> request_cpu_devices(4, env)      # a count already chosen is left alone
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

FLAG = "--xla_force_host_platform_device_count"


def request_cpu_devices(count: int, environ: MutableMapping[str, str] | None = None) -> str | None:
    """Adds `FLAG=count` to XLA_FLAGS unless the user has chosen a CPU device count.

    Args:
      count: the devices wanted; 1 or fewer asks for nothing.
      environ: the environment to change (default `os.environ`).

    Returns:
      The flag added, or None when nothing was changed.
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if count <= 1 or FLAG in flags or env.get("JAX_NUM_CPU_DEVICES"):
        return None
    flag = f"{FLAG}={int(count)}"
    env["XLA_FLAGS"] = f"{flags} {flag}".strip()
    return flag
