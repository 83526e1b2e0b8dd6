"""`lwm-train`'s command line answers argument errors, missing datasets and a missing `init_from`
before importing JAX, naming the stage, the directory or the path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from lwmkit.lwm_model.train_cli import check_inputs
from lwmkit.lwm_model.train_presets import load_config
from lwmkit.packing.manifest import MANIFEST_NAME
from lwmkit.packing.records import FORMAT_VERSION

# Runs lwm-train's main, then prints its exit code and whether JAX was imported.
_RUN = """
import sys, json
from lwmkit.lwm_model.train_cli import main
rc = main(sys.argv[1:])
print(json.dumps([rc, "jax" in sys.modules]))
"""


def _dataset(path) -> None:
    path.mkdir(parents=True)
    (path / MANIFEST_NAME).write_text(json.dumps({"format_version": FORMAT_VERSION}))


def test_inputs_are_checked_stage_by_stage(tmp_path):
    config = load_config("tiny-progressive", [f"data_root={tmp_path}"])
    with pytest.raises(ValueError, match=rf"stage 'tiny-512': {tmp_path}/packed-512/{MANIFEST_NAME}: no manifest"):
        check_inputs(config)
    _dataset(tmp_path / "packed-512")
    with pytest.raises(ValueError, match=r"stage 'tiny-2048': .*packed-2048/manifest.json: no manifest"):
        check_inputs(config)
    _dataset(tmp_path / "packed-2048")
    check_inputs(config)
    missing = load_config("tiny-progressive", [f"data_root={tmp_path}", f"init_from=orbax:{tmp_path}/run"])
    with pytest.raises(ValueError, match=rf"init_from='orbax:{tmp_path}/run': {tmp_path}/run does not exist"):
        check_inputs(missing)


@pytest.mark.parametrize("argv, message", [
    (["tiny-cpu", "data_root={tmp}"], "stage 'tiny-512': {tmp}/packed-512/manifest.json: no manifest"),
    (["tiny-cpu", "steps=zero"], "steps"),
    (["nonesuch"], "neither a preset"),
])  # fmt: skip
def test_errors_come_before_jax(argv, message, tmp_path):
    args = [a.format(tmp=tmp_path) for a in argv] + [f"output={tmp_path}/run"]
    proc = subprocess.run([sys.executable, "-P", "-c", _RUN, *args], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[2, false]", proc.stderr[-2000:]
    assert message.format(tmp=tmp_path) in proc.stderr
    assert not (tmp_path / "run").exists()
