"""JAX's persistent compilation cache for every lwmkit process that compiles: where it lives, how to
move or switch it off, and the thresholds that let small programs in.

A VQGAN encoder costs ~30 CPU-seconds to compile on a 2-core machine, the tiny model's train step
several; without a cache every `lwm-pack images`, `inspect --render`, `lwm-chat`, `lwm-train` and
every Beam worker pays that again. `enable_compile_cache()` points JAX at a folder where compiled
executables persist between processes:

    --jax-cache PATH|off     (lwm-chat, lwm-generate, lwm-needle run, lwm-train)
    LWMKIT_JAX_CACHE=PATH|off   (every command, and the Beam / Grain worker processes it starts)
    JAX_COMPILATION_CACHE_DIR   (JAX's own setting, used when the two above are absent)
    default: $XDG_CACHE_HOME/lwmkit/jax, i.e. ~/.cache/lwmkit/jax

JAX caches only programs that took >= 1 s to compile by default; here every program is cached
(min compile time 0, no minimum entry size), since on a shared 2-core machine even sub-second
compiles add up over a job's stages. The folder is kept under `MAX_BYTES` (least recently used
entries go first), which also makes JAX take a file lock around each read and write, so worker
processes sharing the folder never see a half-written entry. JAX's own `JAX_PERSISTENT_CACHE_*`
and `JAX_COMPILATION_CACHE_MAX_SIZE` variables, when set, win over these defaults.

The cache is trusted input (JAX loads executables from it): keep it in a folder only you can write.
JAX is imported when called, so `lwmkit.packing` stays importable without it. Call it before the
first compile of a process; a later call still caches what compiles afterwards, and a later call
with another choice replaces the earlier one.

Example:
    >>> enable_compile_cache()            # '/home/me/.cache/lwmkit/jax'
    >>> enable_compile_cache("off")       # None: nothing persists
"""

from __future__ import annotations

import os
import warnings
from typing import Any

ENV = "LWMKIT_JAX_CACHE"
OFF = ("off", "none", "0", "false", "no")
MAX_BYTES = 4 << 30

_applied: dict[str, Any] = {}


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/lwmkit/jax`, or `~/.cache/lwmkit/jax` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lwmkit", "jax")


def resolve_cache_dir(option: str | None = None) -> str | None:
    """The cache folder a process should use, or None when switched off.

    Precedence: `option` (a command's --jax-cache), then $LWMKIT_JAX_CACHE, then JAX's own
    $JAX_COMPILATION_CACHE_DIR, then `default_cache_dir()`. "off" (or none, 0, false, no) disables.

    Raises:
      ValueError: for an empty value.
    """
    return _resolve(option)[0]


def _resolve(option: str | None) -> tuple[str | None, str]:
    """(folder or None, where the choice came from)."""
    for source, value in (("--jax-cache", option), (ENV, os.environ.get(ENV))):
        if value is None:
            continue
        if not value.strip():
            raise ValueError(f"{source}={value!r}: give a folder or 'off'")
        if value.strip().lower() in OFF:
            return None, source
        return os.path.abspath(os.path.expanduser(value)), source
    jax_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if jax_dir:
        return os.path.abspath(os.path.expanduser(jax_dir)), "JAX_COMPILATION_CACHE_DIR"
    return default_cache_dir(), "default"


def enable_compile_cache(option: str | None = None, *, export: bool = False) -> str | None:
    """Points JAX's persistent compilation cache at `resolve_cache_dir(option)`, or switches it off.

    Args:
      option: a command's --jax-cache value (None: the environment decides).
      export: also set $LWMKIT_JAX_CACHE to the choice, so the processes this one starts (Beam and
        Grain workers) make the same one.

    Returns:
      The folder in use, or None when the cache is off (also when the default folder cannot be
      created, e.g. a read-only home on a worker: a warning says so and the process goes on).

    Raises:
      ValueError: for an empty value, or a folder given by option or variable that cannot be created
        (naming it).
    """
    path, source = _resolve(option)
    if path is not None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            if source != "default":
                raise ValueError(f"{source}: JAX compilation cache {path}: cannot create it: {e}") from e
            warnings.warn(f"JAX compilation cache {path}: cannot create it ({e}); compiling without one, "
                          f"set ${ENV} to a writable folder", stacklevel=2)  # fmt: skip
            path = None
    if export:
        os.environ[ENV] = path or "off"
    if _applied.get("path", ...) == path:
        return path
    import jax

    if "path" in _applied:  # another choice earlier in this process: JAX initialises its cache once
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
    _applied["path"] = path
    jax.config.update("jax_enable_compilation_cache", path is not None)
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    defaults = (
        ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "jax_persistent_cache_min_compile_time_secs", 0.0),
        ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "jax_persistent_cache_min_entry_size_bytes", -1),
        ("JAX_COMPILATION_CACHE_MAX_SIZE", "jax_compilation_cache_max_size", MAX_BYTES),
    )
    for variable, name, value in defaults:
        if variable not in os.environ:
            jax.config.update(name, value)
    return path


def add_cache_argument(parser: Any) -> None:
    """Adds --jax-cache PATH|off to an argparse parser (apply it with `enable_compile_cache(args.jax_cache,
    export=True)`)."""
    parser.add_argument(
        "--jax-cache", metavar="PATH|off", default=None,
        help=f"folder of JAX's persistent compilation cache, or 'off' (default: ${ENV}, else "
             f"$JAX_COMPILATION_CACHE_DIR, else {default_cache_dir()})",
    )  # fmt: skip
