"""JAX's persistent compilation cache: which folder wins (option, variables, default), 'off', and a
second process that finds the first one's compiled program instead of compiling it again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from lwmkit.packing.compile_cache import (
    ENV,
    add_cache_argument,
    default_cache_dir,
    enable_compile_cache,
    resolve_cache_dir,
)

# A fresh process that enables the cache (the environment decides) and jits one program, then prints
# the cache folder and the cache hits and misses JAX reported.
_PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
from lwmkit.packing.compile_cache import enable_compile_cache
path = enable_compile_cache(sys.argv[1] if len(sys.argv) > 1 else None)
jax.jit(lambda x: jnp.sin(x) @ x.T + 3)(jnp.ones((8, 8))).block_until_ready()
print(json.dumps({"path": path, "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _run(env: dict[str, str], *argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROGRAM, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in (ENV, "JAX_COMPILATION_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return monkeypatch


def test_the_option_then_lwmkit_then_jax_variable_then_the_user_cache_folder(clean_env, tmp_path):
    assert default_cache_dir() == str(tmp_path / "xdg" / "lwmkit" / "jax")
    assert resolve_cache_dir() == default_cache_dir()
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jaxs"))
    assert resolve_cache_dir() == str(tmp_path / "jaxs")
    clean_env.setenv(ENV, str(tmp_path / "ours"))
    assert resolve_cache_dir() == str(tmp_path / "ours")
    assert resolve_cache_dir(str(tmp_path / "opt")) == str(tmp_path / "opt")
    assert resolve_cache_dir("OFF") is None and resolve_cache_dir("none") is None
    clean_env.setenv(ENV, "off")
    assert resolve_cache_dir() is None
    assert resolve_cache_dir(str(tmp_path / "opt")) == str(tmp_path / "opt")  # the option wins over the variable
    with pytest.raises(ValueError, match="--jax-cache=' ': give a folder or 'off'"):
        resolve_cache_dir(" ")


def test_a_folder_that_cannot_be_made_is_named(clean_env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=f"--jax-cache: JAX compilation cache {blocker}/jax: cannot create it"):
        enable_compile_cache(str(blocker / "jax"))


def test_the_option_is_documented_in_help():
    import argparse

    p = argparse.ArgumentParser()
    add_cache_argument(p)
    assert p.parse_args(["--jax-cache", "off"]).jax_cache == "off"
    assert ENV in p.format_help()


def test_a_second_process_loads_the_first_ones_program_from_the_cache(clean_env, tmp_path):
    env = {**os.environ, ENV: str(tmp_path / "cache")}
    first = _run(env)
    assert first["path"] == str(tmp_path / "cache") and first["hits"] == 0 and first["misses"] >= 1
    assert len(os.listdir(tmp_path / "cache")) >= first["misses"]  # every program persists, even sub-second ones
    second = _run(env)
    assert second == {"path": str(tmp_path / "cache"), "hits": first["misses"], "misses": 0}
    # The user's cache folder by default; "off" keeps nothing.
    env.pop(ENV)
    assert _run(env)["path"] == default_cache_dir() and os.listdir(default_cache_dir())
    off = _run({**env, "XDG_CACHE_HOME": str(tmp_path / "other")}, "off")
    assert off == {"path": None, "hits": 0, "misses": 0} and not (tmp_path / "other").exists()
