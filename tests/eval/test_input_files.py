"""Input files checked before anything heavy loads: each problem names the option and the path, and
`lwm-chat` / `lwm-generate` report a missing input without importing JAX (well under a second of CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from lwmkit.eval.input_files import InputFileError, check_input_files, check_output_folder


def test_each_problem_names_the_option_and_the_path(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    check_input_files([("--text-file", str(f), "file"), ("--checkpoint", str(tmp_path), "any"),
                       ("--media", None, "file"), ("--out", str(tmp_path), "dir")])  # fmt: skip
    with pytest.raises(InputFileError, match=f"^--media {tmp_path}/b.png: no such file$"):
        check_input_files([("--text-file", str(f), "file"), ("--media", str(tmp_path / "b.png"), "file")])
    with pytest.raises(InputFileError, match="no such file or directory"):
        check_input_files([("--checkpoint", str(tmp_path / "run"), "any")])
    with pytest.raises(InputFileError, match=f"--media {tmp_path}: is a directory, not a file"):
        check_input_files([("--media", str(tmp_path), "file")])
    with pytest.raises(InputFileError, match="is a file, not a directory"):
        check_input_files([("--out", str(f), "dir")])
    with pytest.raises(ValueError, match=r"--x: kind 'folder'; allowed: \['file', 'dir', 'any'\]"):
        check_input_files([("--x", str(f), "folder")])
    check_output_folder("--output", str(tmp_path / "new.png"))
    with pytest.raises(InputFileError, match=f"--output {tmp_path}/no/x.png: the folder {tmp_path}/no does not exist"):
        check_output_folder("--output", str(tmp_path / "no" / "x.png"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_named(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    f.chmod(0)
    with pytest.raises(InputFileError, match="not readable"):
        check_input_files([("--text-file", str(f), "file")])


# Runs a command's main and prints its exit code and the heavy modules it imported.
_RUN = """
import sys, json, importlib
main = importlib.import_module(sys.argv[1]).main
rc = main(sys.argv[2:])
print(json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'orbax'})]))
"""


@pytest.mark.parametrize("module, argv, message", [
    ("lwmkit.eval.inference.chat_cli", ["--question", "q", "--media", "{tmp}/cat.png"], "--media {tmp}/cat.png: no such file"),
    ("lwmkit.eval.inference.chat_cli", ["--question", "q", "--text-file", "{tmp}/a.txt"], "--text-file {tmp}/a.txt: no such file"),
    ("lwmkit.eval.inference.chat_cli", ["--question", "q", "--checkpoint", "{tmp}/run"], "--checkpoint {tmp}/run: no such file or"),
    ("lwmkit.eval.inference.chat_cli", ["--question", "q", "--media", "{tok}", "--text-file", "{tok}"], "give --media or --text-file, not both"),
    ("lwmkit.eval.inference.generate_cli", ["--prompt", "a fox", "--output", "{tmp}/x.png", "--vqgan", "{tmp}/v.msgpack"],
     "--vqgan {tmp}/v.msgpack: no such file or directory"),
    ("lwmkit.eval.inference.generate_cli", ["--prompt", "a fox", "--output", "{tmp}/no/x.png"], "--output {tmp}/no/x.png: the folder"),
])  # fmt: skip
def test_a_missing_input_is_reported_before_jax_loads(module, argv, message, bpe_model, tmp_path):
    fill = {"tmp": str(tmp_path), "tok": bpe_model}
    args = ["--tokenizer", bpe_model, "--preset", "tiny", *(a.format(**fill) for a in argv)]
    proc = subprocess.run([sys.executable, "-P", "-c", _RUN, module, *args], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "[1, []]", proc.stderr[-2000:]
    assert message.format(**fill) in proc.stderr
