"""A command's input files, checked before anything heavy loads (JAX, a model, a VQGAN).

`lwm-chat` and `lwm-generate` take a tokenizer, a VQGAN, a checkpoint, media and text files; a
typo in any of them should cost a fraction of a second, not a model load. `check_input_files`
names the option and the path of the first one that is missing, of the wrong kind or unreadable.

Example:
    >>> check_input_files([("--media", "cat.png", "file"), ("--checkpoint", "runs/tiny", "any")])
    InputFileError: --media cat.png: no such file
"""

from __future__ import annotations

import os
from collections.abc import Iterable

KINDS = ("file", "dir", "any")


class InputFileError(ValueError):
    """An input file is missing, of the wrong kind or unreadable (the message names option and path)."""


def check_input_files(inputs: Iterable[tuple[str, str | None, str]]) -> None:
    """Checks (option, path, kind) triples in order; a None path (option not given) is skipped.

    Args:
      inputs: kind is "file", "dir" or "any" (a file or a directory, e.g. a checkpoint).

    Raises:
      InputFileError: for the first path that does not exist, is not of its kind, or cannot be read.
      ValueError: for an unknown kind.
    """
    for option, path, kind in inputs:
        if kind not in KINDS:
            raise ValueError(f"{option}: kind {kind!r}; allowed: {list(KINDS)}")
        if path is None:
            continue
        if not os.path.exists(path):
            raise InputFileError(f"{option} {path}: no such {'file or directory' if kind == 'any' else kind}")
        if kind == "file" and not os.path.isfile(path):
            raise InputFileError(f"{option} {path}: is a directory, not a file")
        if kind == "dir" and not os.path.isdir(path):
            raise InputFileError(f"{option} {path}: is a file, not a directory")
        if not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
            raise InputFileError(f"{option} {path}: not readable (permission denied)")


def check_output_folder(option: str, path: str) -> None:
    """The folder an output file goes to must exist (the file itself is written later).

    Raises:
      InputFileError: naming the option, the path and the missing folder.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputFileError(f"{option} {path}: the folder {folder} does not exist")
