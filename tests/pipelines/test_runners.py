"""The books and images jobs (and videos, on Dask) on engines with separate workers write the
DirectRunner's shards.

Each job runs three times on the same inputs (`golden.py`'s): on the DirectRunner, on Beam's Dask
runner over a 2-worker `distributed.LocalCluster` the job starts on 127.0.0.1 (`--runner
DaskRunner`, the short name), and through `PortableRunner` against Beam's local job service
with SDK workers in an external worker pool (`--environment_type=EXTERNAL`), both processes
started here on 127.0.0.1: how Flink and Spark deployments run Python. Every shard, index and
failures file must be byte-identical to the DirectRunner's, and every manifest equal apart
from the runner it records and its timestamps (counts reconciled as on the DirectRunner).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import golden
from .helpers import unset_proxies

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[2]} exited {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{proc.args[2]} did not listen on 127.0.0.1:{port} in {timeout_s}s")


def _start(module: str, *args: str, cwd: Path) -> subprocess.Popen:
    # The pool starts each SDK worker as `python -c ...`: this interpreter's folder comes first on
    # PATH, and PYTHONSAFEPATH keeps the working directory (a repo root's tokenizers/) off sys.path.
    env = {**os.environ, "PYTHONSAFEPATH": "1",
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory) -> Path:
    """The folder the jobs run in and the worker pool starts in: a cluster's shared file system,
    where a relative path means the same file to the launcher and to every worker."""
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def portable_args(shared_dir):
    """Beam's local job service and an external SDK worker pool, both on 127.0.0.1."""
    job_port, pool_port = _free_port(), _free_port()
    procs = [
        _start("apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}", cwd=shared_dir),
        _start("apache_beam.runners.portability.local_job_service_main", f"--port={job_port}", cwd=shared_dir),
    ]
    try:
        for proc, port in zip(procs, (pool_port, job_port), strict=True):
            _wait_for_port(port, proc)
        yield ["--runner", "PortableRunner", f"--job_endpoint=localhost:{job_port}",
               "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}",
               "--sdk_worker_parallelism=2"]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


RUNNERS = {
    "direct": lambda _: ["--runner", "DirectRunner"],
    "dask": lambda _: ["--runner", "DaskRunner", "--direct-num-workers", "2"],
    "portable": lambda portable: portable,
}


def _books(out: str, runner: list[str]) -> None:
    tok = "tokenizer.model" if Path("tokenizer.model").exists() else golden._tokenizer(Path("tokenizer.model"))
    books = golden._book_inputs(Path("in") / "books")
    inputs = [a for p in books for a in ("--input", p)]
    golden._run("books", *inputs, "--tokenizer", tok, "--seq-len", "512,2048", "--output", out,
                "--shard-tokens", "4000", *runner)


def _images(out: str, runner: list[str]) -> None:
    tok = "tokenizer.model" if Path("tokenizer.model").exists() else golden._tokenizer(Path("tokenizer.model"))
    image_inputs = [a for p in golden._image_inputs(Path("in") / "images") for a in ("--input", p)]
    golden._run("images", *image_inputs, "--tokenizer", tok, "--vqgan-preset", "tiny", "--vqgan-seed", "7",
                "--seq-len", "300,1200", "--generation-fraction", "0.5", "--seed", "3", "--batch-size", "4",
                "--output", out, *runner)


def _videos(out: str, runner: list[str]) -> None:
    tok = "tokenizer.model" if Path("tokenizer.model").exists() else golden._tokenizer(Path("tokenizer.model"))
    videos = golden._video_inputs(Path("in") / "videos")
    # Decode workers are shared per settings in a process and resolve relative paths against the
    # folder they started in: --videos-per-worker of its own gives this test workers started here.
    golden._run("videos", "--input", videos, "--tokenizer", tok, "--vqgan-preset", "tiny", "--vqgan-seed", "7",
                "--num-frames", "3", "--chunk-frames", "2", "--seq-len", "2000,800", "--seed", "5",
                "--videos-per-worker", "31", "--output", out, *runner)


def _outputs(root: Path, job: str) -> dict[str, bytes]:
    """Every shard, index, metadata and failures file of `out/<job>`; manifests without the runner."""
    out = {}
    for path in sorted((root / "out" / job).rglob("*")):
        rel = path.relative_to(root / "out" / job).as_posix()
        if not path.is_file() or ".work" in path.parts or ".lwm-pack" in path.parts:  # bookkeeping, not output
            continue
        if path.name == "manifest.json":
            manifest = json.loads(path.read_bytes())
            manifest.pop("timestamps", None)
            manifest.get("job", {}).pop("runner", None)
            manifest.pop("runner", None)
            out[rel] = json.dumps(manifest, sort_keys=True).encode()
        else:
            out[rel] = path.read_bytes()
    return out


@pytest.mark.parametrize("runner", ["dask", "portable"])
@pytest.mark.parametrize("job", ["books", "images"])
def test_engines_with_separate_workers_write_the_direct_runners_shards(job, runner, shared_dir, monkeypatch,
                                                                        portable_args):
    unset_proxies(monkeypatch)
    run = {"books": _books, "images": _images}[job]
    monkeypatch.chdir(shared_dir)
    run(f"out/{job}-direct-for-{runner}", RUNNERS["direct"](portable_args))
    direct = _outputs(shared_dir, f"{job}-direct-for-{runner}")
    run(f"out/{job}-{runner}", RUNNERS[runner](portable_args))
    other = _outputs(shared_dir, f"{job}-{runner}")
    assert any(".array_record-" in p for p in direct), "the DirectRunner wrote no shard"
    assert any(p.endswith("failures.jsonl") for p in direct)
    assert sorted(other) == sorted(direct), f"{runner} wrote other files than the DirectRunner"
    differ = [p for p in direct if other[p] != direct[p]]
    assert differ == [], f"{runner}: {differ} differ from the DirectRunner's"


def test_videos_on_dask_write_the_direct_runners_shards(shared_dir, monkeypatch):
    """The videos job's decode stage (tagged records, no multi-output ParDo) on the Dask runner."""
    unset_proxies(monkeypatch)
    monkeypatch.chdir(shared_dir)
    _videos("out/videos-direct-for-dask", RUNNERS["direct"](None))
    direct = _outputs(shared_dir, "videos-direct-for-dask")
    _videos("out/videos-dask", RUNNERS["dask"](None))
    other = _outputs(shared_dir, "videos-dask")
    assert any(".array_record-" in p for p in direct), "the DirectRunner wrote no shard"
    assert any(p.endswith("failures.jsonl") for p in direct)
    assert sorted(other) == sorted(direct), "dask wrote other files than the DirectRunner"
    differ = [p for p in direct if other[p] != direct[p]]
    assert differ == [], f"dask: {differ} differ from the DirectRunner's"


def _qa(out: str, runner: list[str]) -> None:
    tok = "tokenizer.model" if Path("tokenizer.model").exists() else golden._tokenizer(Path("tokenizer.model"))
    golden._run("qa", "--input", golden._qa_inputs(Path("in") / "qa"), "--tokenizer", tok, "--preset", "tiny",
                "--generator", "extractive", "--seed", "2", "--output", out, *runner)


def _pack(out: str, runner: list[str]) -> None:
    tok = "tokenizer.model" if Path("tokenizer.model").exists() else golden._tokenizer(Path("tokenizer.model"))
    if not Path("out/books-for-pack/manifest.json").exists():
        books = golden._book_inputs(Path("in") / "books")
        golden._run("books", *[a for p in books for a in ("--input", p)], "--tokenizer", tok, "--seq-len", "512",
                    "--output", "out/books-for-pack")
    golden._run("pack", "--documents", "out/books-for-pack/documents", "--schedule", "256,1024,4096",
                "--min-doc-tokens", "0,300,0", "--output", out, "--long-document-policy", "drop", *runner)


@pytest.mark.parametrize("job", ["qa", "pack"])
def test_qa_and_pack_on_dask_write_the_direct_runners_shards(job, shared_dir, monkeypatch):
    """The QA job ends a branch in its statistics, which Beam 2.77's Dask runner never ran (it computed
    only the last bag); `engine.runner` runs every branch. The pack job reads document shards."""
    monkeypatch.chdir(shared_dir)
    run = {"qa": _qa, "pack": _pack}[job]
    run(f"out/{job}-direct-for-dask", RUNNERS["direct"](None))
    direct = _outputs(shared_dir, f"{job}-direct-for-dask")
    run(f"out/{job}-dask", RUNNERS["dask"](None))
    other = _outputs(shared_dir, f"{job}-dask")
    assert any(".array_record-" in p for p in direct), "the DirectRunner wrote no shard"
    assert sorted(other) == sorted(direct), "dask wrote other files than the DirectRunner"
    differ = [p for p in direct if other[p] != direct[p]]
    assert differ == [], f"dask: {differ} differ from the DirectRunner's"
