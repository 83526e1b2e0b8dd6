"""Shared fixtures: a tiny SentencePiece BPE model trained on text generated here.

JAX is pinned to 8 virtual CPU devices before anything imports it (house style: tests that shard
over a mesh see the same 8 devices on every machine), and its compilation cache to a folder of the
session.
"""

from __future__ import annotations

import os
import platform

os.environ["JAX_PLATFORMS"] = "cpu"
# XLA compiles for the host's CPU: with AVX-512 its float sums round differently from AVX2, and the
# VQGAN's nearest code flips on near-ties (the golden run's video codes differed between an AVX-512
# and an AVX2 machine). Capping the instruction set at AVX2 on x86-64 makes every test's numbers,
# and the golden digests, the same on any x86-64 machine from the last decade.
_ISA = " --xla_cpu_max_isa=AVX2" if platform.machine().lower() in ("x86_64", "amd64") else ""
# The concurrency-optimised CPU scheduler was seen to deadlock a dense-attention train step on an
# fsdp=2 x sp=4 mesh of virtual devices (XLA aborts after ~40 s); the default scheduler does not.
os.environ["XLA_FLAGS"] = (
    "--xla_force_host_platform_device_count=8 --xla_cpu_enable_concurrency_optimized_scheduler=false" + _ISA
)

import random  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# JAX's compilation cache (packing/compile_cache.py) goes to a folder of this session, not the user's
# ~/.cache, unless LWMKIT_JAX_CACHE already names one; commands the tests start share it.
_SESSION_JAX_CACHE = None if "LWMKIT_JAX_CACHE" in os.environ else tempfile.mkdtemp(prefix="lwmkit-jax-cache-")
if _SESSION_JAX_CACHE:
    os.environ["LWMKIT_JAX_CACHE"] = _SESSION_JAX_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_JAX_CACHE:
        shutil.rmtree(_SESSION_JAX_CACHE, ignore_errors=True)

TINY_VOCAB = 600


def tiny_training_lines(seed: int = 0, books: int = 12) -> list[str]:
    """Non-empty lines of generated sample books: enough text for a few hundred BPE merges."""
    from lwmkit.pipelines.tools.sample_corpus import sample_book

    rng = random.Random(seed)
    return [line for _ in range(books) for line in sample_book(rng, 24).split("\n") if line]


@pytest.fixture(scope="session")
def bpe_model(tmp_path_factory) -> str:
    """Path of a tiny SentencePiece BPE `.model` (600 pieces) trained with `train_bpe`."""
    from lwmkit.tokenizers import train_bpe

    model = train_bpe(tiny_training_lines(), vocab_size=TINY_VOCAB, seed=0)
    path = tmp_path_factory.mktemp("tokenizer") / "tiny.model"
    path.write_bytes(model)
    return str(path)


@pytest.fixture(scope="session")
def tiny_tokenizer(bpe_model) -> str:
    """The same tiny model under the name some tests use."""
    return bpe_model
