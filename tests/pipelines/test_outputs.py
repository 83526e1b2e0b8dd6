"""Remote outputs go through Beam's FileSystems: a test filesystem with its own scheme proves it.

`memfs://` here is a Beam `FileSystem` that stores files under a local folder but is reached only
through Beam's `FileSystems` API, like `gs://` or `s3://` would be.
"""

from __future__ import annotations

import glob
import json
import os

import pytest
from apache_beam.io.filesystem import FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem
from lwmkit.packing import ShardDataSource, verify_directory
from lwmkit.pipelines import BooksOptions, run_books
from lwmkit.pipelines.engine.outputs import (
    is_local,
    read_output_bytes,
    write_output_bytes,
    write_output_shard,
)
from lwmkit.pipelines.tools.sample_corpus import write_sample_corpus

_ROOT = {"dir": None}
SCHEME = "lwmtestfs"


class _TestFileSystem(LocalFileSystem):
    """A Beam filesystem for `lwmtestfs://path`, backed by a local folder."""

    @classmethod
    def scheme(cls):
        return SCHEME

    def _local(self, path: str) -> str:
        assert path.startswith(f"{SCHEME}://"), path
        return os.path.join(_ROOT["dir"], path[len(SCHEME) + 3 :])

    def _remote(self, path: str) -> str:
        return f"{SCHEME}://" + os.path.relpath(path, _ROOT["dir"])

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *paths])

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return head, tail

    def mkdirs(self, path):
        os.makedirs(self._local(path), exist_ok=True)

    def match(self, patterns, limits=None):
        results = []
        for pattern in patterns:
            found = sorted(p for p in glob.glob(self._local(pattern)) if os.path.isfile(p))
            metadata = [FileMetadata(self._remote(p), os.path.getsize(p), os.path.getmtime(p)) for p in found]
            results.append(MatchResult(pattern, metadata))
        return results

    def create(self, path, *args, **kwargs):
        os.makedirs(os.path.dirname(self._local(path)), exist_ok=True)
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def copy(self, sources, destinations):
        for d in destinations:
            os.makedirs(os.path.dirname(self._local(d)), exist_ok=True)
        return super().copy([self._local(s) for s in sources], [self._local(d) for d in destinations])

    def rename(self, sources, destinations):
        return super().rename([self._local(s) for s in sources], [self._local(d) for d in destinations])

    def exists(self, path):
        return super().exists(self._local(path))

    def size(self, path):
        return super().size(self._local(path))

    def last_updated(self, path):
        return super().last_updated(self._local(path))

    def checksum(self, path):
        return super().checksum(self._local(path))

    def delete(self, paths):
        # LocalFileSystem.delete matches the (already local) paths with this class's `match`.
        for p in paths:
            os.remove(self._local(p))


@pytest.fixture
def remote(tmp_path):
    _ROOT["dir"] = str(tmp_path / "bucket")
    os.makedirs(_ROOT["dir"])
    yield f"{SCHEME}://"
    _ROOT["dir"] = None


def test_small_files_and_shards_publish_atomically_to_a_remote_path(remote, tmp_path):
    assert not is_local(remote + "x")
    write_output_bytes(remote + "a/b.json", b'{"x": 1}')
    assert read_output_bytes(remote + "a/b.json") == b'{"x": 1}'
    assert read_output_bytes(remote + "a/missing.json") is None
    info = write_output_shard(remote + "a/s-train.array_record-00000-of-00001", [b"r1", b"r2"])
    assert info.records == 2
    names = sorted(os.listdir(os.path.join(_ROOT["dir"], "a")))
    assert names == ["b.json", "s-train.array_record-00000-of-00001"]  # no temporary names left


def _options(remote: str) -> BooksOptions:
    return BooksOptions(
        inputs=(remote + "raw/*.jsonl.zst", remote + "raw/*.txt"),
        output=remote + "out",
        tokenizer=remote + "tok.model",
        seq_lens=(1024,),
    )


def test_books_job_reads_and_writes_through_beam_filesystems(remote, tmp_path, tiny_tokenizer):
    local_raw = tmp_path / "bucket" / "raw"
    write_sample_corpus(str(local_raw), books=4, seed=1)
    with open(tiny_tokenizer, "rb") as f:
        write_output_bytes(remote + "tok.model", f.read())
    manifest = run_books(_options(remote))
    assert manifest["documents"] == 5
    assert all(f.startswith(remote) for f in manifest["input_files"])
    out = os.path.join(_ROOT["dir"], "out")
    for dataset in ("documents", "packed-1024"):
        assert verify_directory(os.path.join(out, dataset)) == []
    assert len(ShardDataSource(os.path.join(out, "packed-1024"))) == manifest["datasets"]["packed-1024"]["records"]
    failures = [json.loads(x) for x in open(os.path.join(out, "failures.jsonl"))]
    assert [f["reason"] for f in failures] == ["invalid_json"]
    # Complete output with the same options: the rerun does nothing and returns the same manifest.
    again = run_books(_options(remote))
    assert again == manifest
