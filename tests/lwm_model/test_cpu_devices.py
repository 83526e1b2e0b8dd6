"""`lwm-train` on a CPU-only machine: the virtual devices its meshes need are asked for before JAX
starts (unless the user chose a count), and a mesh that still does not fit says what to set."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest
from lwmkit.lwm_model.cpu_devices import FLAG, request_cpu_devices
from lwmkit.lwm_model.mesh import make_mesh
from lwmkit.lwm_model.mesh_spec import devices_needed


def test_the_flag_joins_the_users_other_flags_and_a_chosen_count_is_left_alone():
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/dump"}
    assert request_cpu_devices(8, env) == f"{FLAG}=8"
    assert env["XLA_FLAGS"] == f"--xla_dump_to=/tmp/dump {FLAG}=8"
    assert request_cpu_devices(4, env) is None and env["XLA_FLAGS"].endswith("=8")
    assert request_cpu_devices(1, {}) is None
    chosen = {"JAX_NUM_CPU_DEVICES": "2"}
    assert request_cpu_devices(8, chosen) is None and "XLA_FLAGS" not in chosen
    empty: dict[str, str] = {}
    assert request_cpu_devices(2, empty) == f"{FLAG}=2" and empty == {"XLA_FLAGS": f"{FLAG}=2"}


def test_devices_needed_counts_a_free_axis_as_one():
    assert devices_needed("2,1,1,4") == 8
    assert devices_needed("-1,1,1,4") == 4
    assert devices_needed({"sp": 2, "tp": 2}) == 4
    assert devices_needed("1,1,1,2,4") == devices_needed({"sp": 2, "ulysses": 4}) == 8
    with pytest.raises(ValueError, match="need 4 or 5 sizes"):
        devices_needed("2,4")


def test_a_mesh_too_big_for_the_cpu_devices_says_what_to_set():
    with pytest.raises(ValueError, match=r"need 8 devices, have 2; on CPU, start the process with "
                                         r"XLA_FLAGS=--xla_force_host_platform_device_count=8"):
        make_mesh("2,1,1,4", jax.devices()[:2])
    with pytest.raises(ValueError, match=r"need 1 devices, have 2$"):  # too many: no CPU hint
        make_mesh("1,1,1,1", jax.devices()[:2])


# lwm-train's process set-up, then the devices JAX made, in a process started without a device count.
_PREPARE = """
import sys, jax
from lwmkit.lwm_model.train_cli import prepare_process
from lwmkit.lwm_model.train_presets import load_config
prepare_process(load_config(sys.argv[1]), "off")
print(len(jax.devices()))
"""


@pytest.mark.parametrize("preset, flags, want", [("tiny-cpu", "", 8), ("tiny-cpu", f"{FLAG}=2", 2)])
def test_lwm_train_makes_the_devices_its_preset_needs(preset, flags, want):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    proc = subprocess.run([sys.executable, "-c", _PREPARE, preset], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(want)]
    said = f"lwm-train: 8 virtual CPU devices for the meshes ({FLAG}=8)"
    assert (said in proc.stderr) == (not flags)
