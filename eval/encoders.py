"""The encoders a needle case uses, checked against the ones its haystack was made with.

A haystack made by an lwmkit job records its text tokenizer (`tokenizer`) and, for images and
video, its VQGAN (`vqgan`) in the dataset's manifest or its job's manifest one folder up. A
needle encoded with another tokenizer or VQGAN gives cases nobody can answer (the needle's codes
mean something else than the haystack's), so the builders refuse a mismatch: `check_tokenizer`,
`check_vqgan`. A random VQGAN (`ImageTokenizer.random`) is only for tests; `vqgan_record` gives
what every case records about it and `random_vqgan_warning` the loud message the jobs print.

Example:
    >>> check_vqgan("videos/documents", load_manifest("videos/documents"), ImageTokenizer.random("tiny", seed=0))
    EncoderMismatch: videos/documents: its frames were encoded with VQGAN 3f1c…(random_init, preset tiny,
    seed 7); the needle would be encoded with 9ab2…(random_init, preset tiny, seed 0): ...
"""

from __future__ import annotations

import os
from typing import Any

from lwmkit.packing.manifest import load_manifest


class EncoderMismatch(ValueError):
    """The needle would be encoded with another tokenizer or VQGAN than its haystack."""


def recorded(directory: str, key: str) -> dict[str, Any] | None:
    """The `key` fingerprint ("tokenizer", "vqgan") in a dataset's manifest or, failing that, in its
    job's manifest one folder up."""
    found = load_manifest(directory).get(key)
    parent = os.path.dirname(os.path.normpath(directory))
    if found is None and os.path.exists(os.path.join(parent, "manifest.json")):
        found = load_manifest(parent).get(key)
    return found


def describe(fp: dict[str, Any]) -> str:
    what = f"{str(fp.get('sha256'))[:12]}…"
    if fp.get("random_init"):
        return f"{what} (random_init, preset {fp.get('preset')}, seed {fp.get('seed')})"
    return f"{what} ({fp.get('source') or fp.get('path') or 'weights'})"


def check_tokenizer(directory: str, manifest: dict[str, Any], tokenizer: Any, consequence: str) -> None:
    """Refuses a text tokenizer other than the one `manifest` (of `directory`) records.

    Raises:
      EncoderMismatch: naming the dataset, both fingerprints and `consequence`.
    """
    want = (manifest.get("tokenizer") or {}).get("sha256")
    have = tokenizer.fingerprint().get("sha256") if hasattr(tokenizer, "fingerprint") else None
    if want and have and want != have:
        raise EncoderMismatch(
            f"{directory}: made with tokenizer {want[:12]}…, given {have[:12]}…; {consequence}"
        )


def check_vqgan(directory: str, image_tokenizer: Any) -> None:
    """Refuses a VQGAN other than the one the dataset at `directory` was tokenized with.

    A dataset that records no VQGAN (made before lwmkit recorded one) is accepted.

    Raises:
      EncoderMismatch: naming the dataset and both VQGANs.
    """
    want = recorded(directory, "vqgan")
    have = image_tokenizer.fingerprint()
    if want and want.get("sha256") and want["sha256"] != have["sha256"]:
        hint = (
            f"rebuild it with --vqgan-preset {want.get('preset')} and the same seed"
            if want.get("random_init")
            else f"pass --vqgan with its weights ({want.get('path') or want.get('source')})"
        )
        raise EncoderMismatch(
            f"{directory}: its frames were encoded with VQGAN {describe(want)}; the needle would be encoded "
            f"with {describe(have)}: its codes would mean nothing in this video; {hint}"
        )


def vqgan_record(image_tokenizer: Any) -> dict[str, Any]:
    """What a case records about the VQGAN that encoded its needle."""
    fp = image_tokenizer.fingerprint()
    out = {k: fp.get(k) for k in ("sha256", "preset", "source", "random_init")}
    if fp.get("random_init"):
        out["seed"] = fp.get("seed")
    return out


def random_vqgan_warning(preset: str, seed: int) -> str:
    """The warning for a needle encoded with a randomly initialised VQGAN."""
    return (
        f"no --vqgan weights given: the needle is encoded with a RANDOMLY INITIALISED VQGAN ({preset} preset, "
        f"seed {seed}); its codes are meaningless to a trained model (fine for tests). Every case records "
        "needle_vqgan.random_init=true."
    )
