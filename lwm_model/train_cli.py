"""The `lwm-train` command line: arguments, config and inputs checked before JAX starts, then `train`.

`--help`, a bad override, a missing dataset (no manifest.json) or a missing `init_from` answer
from here without importing JAX (a fraction of a CPU-second). Then, before JAX starts its backend:
on a CPU-only machine the virtual devices the stages' meshes need (`cpu_devices.py`; tiny-cpu:
8, so the README's `lwm-train tiny-cpu ...` runs as written) unless XLA_FLAGS or
JAX_NUM_CPU_DEVICES already set a count, and JAX's persistent compilation cache (`--jax-cache`,
`lwmkit.packing.compile_cache`).

    lwm-train tiny-cpu data_root=out/books output=runs/tiny
    lwm-train runs/tiny/config.json --stop-after 100 --jax-cache off
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from lwmkit.lwm_model.cpu_devices import request_cpu_devices
from lwmkit.lwm_model.mesh_spec import devices_needed
from lwmkit.lwm_model.train_config import TrainConfig
from lwmkit.lwm_model.train_presets import TRAIN_PRESETS, load_config
from lwmkit.packing.compile_cache import add_cache_argument, enable_compile_cache
from lwmkit.packing.manifest import load_manifest


def check_inputs(config: TrainConfig) -> None:
    """Every local dataset of every stage has a readable manifest, and a local `init_from` exists.

    Remote datasets (a URL) are read later, by the loader.

    Raises:
      ValueError: naming the stage, the directory or file and what is wrong.
    """
    for stage in config.stages:
        for directory in stage.directories(config.data_root):
            if "://" in directory:
                continue
            try:
                load_manifest(directory)
            except ValueError as e:
                raise ValueError(f"stage {stage.name!r}: {e}") from e
    if config.init_from:
        path = config.init_from.partition(":")[2]
        if "://" not in path and not os.path.exists(path):
            raise ValueError(f"init_from={config.init_from!r}: {path} does not exist")


def prepare_process(config: TrainConfig, jax_cache: str | None) -> None:
    """Before JAX starts its backend: the CPU devices the meshes need, and the compilation cache."""
    needed = max(devices_needed(stage.mesh) for stage in config.stages)
    added = request_cpu_devices(needed)
    enable_compile_cache(jax_cache, export=True)
    import jax

    if added and jax.default_backend() == "cpu":
        print(f"lwm-train: {needed} virtual CPU devices for the meshes ({added})", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The `lwm-train` console script: `lwm-train CONFIG [key=value ...]`."""
    parser = argparse.ArgumentParser(
        prog="lwm-train",
        description="Train the LWM model on lwmkit shards, stage by stage (see lwmkit.lwm_model.train).",
    )
    parser.add_argument("config", nargs="?", help=f"a preset ({', '.join(TRAIN_PRESETS)}) or a JSON config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data_root=out steps=100 lr=1e-4")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument("--stop-after", type=int, default=None, help="stop (and checkpoint) after N steps")
    parser.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    add_cache_argument(parser)
    args = parser.parse_args(argv)
    if args.list_presets:
        for name, fn in TRAIN_PRESETS.items():
            print(f"{name}: {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.config is None:
        parser.error("give a preset or a config file (--list-presets lists the presets)")
    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(json.dumps(config.to_dict(), indent=1, sort_keys=True))
            return 0
        check_inputs(config)
        prepare_process(config, args.jax_cache)
        from lwmkit.lwm_model.train import train

        result = train(config, stop_after=args.stop_after)
    except ValueError as e:
        print(f"lwm-train: error: {e}", file=sys.stderr)
        return 2
    state = "stopped early at" if result.interrupted else "finished at"
    print(f"lwm-train: {state} stage {result.stage!r} step {result.step}; {config.output}", file=sys.stderr)
    return 0
