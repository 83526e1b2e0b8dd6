"""Object storage end to end, against a real S3-protocol server (moto) on 127.0.0.1.

Inputs are read from `s3://`, shards and manifests are written to `s3://`, and the Grain loader
reads the packed shards back from `s3://` (through its verified local cache); every record equals
the one a local run of the same job writes.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from lwmkit.packing import ShardDataSource, make_loader
from lwmkit.packing.records import RecordError
from lwmkit.pipelines import BooksOptions, run_books

from .helpers import book, record, write_jsonl_zst

pytest.importorskip("boto3", reason="needs apache-beam[aws] (the test extra installs it)")
moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (the test extra installs it)")

BUCKET = "lwm-corpus"


@pytest.fixture(scope="module")
def s3():
    """(endpoint URL, boto3 client, Beam flags) of a moto S3 server on 127.0.0.1."""
    import boto3

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # Beam's FileSystems options are process-wide and the last job's win; a training process
    # finds the endpoint the way boto3 does, from the environment.
    old["AWS_ENDPOINT_URL"] = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = url
    client = boto3.client("s3", endpoint_url=url)
    client.create_bucket(Bucket=BUCKET)
    flags = (
        f"--s3_endpoint_url={url}",
        "--s3_access_key_id=testing",
        "--s3_secret_access_key=testing",
        "--s3_region_name=us-east-1",
        "--s3_disable_ssl",
    )
    yield url, client, flags
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _keys(client, prefix: str) -> list[str]:
    out = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in out.get("Contents", []))


def test_books_job_reads_and_writes_s3_and_the_loader_reads_it_back(s3, tmp_path, bpe_model):
    url, client, flags = s3
    local_in = tmp_path / "in"
    local_in.mkdir()
    path = write_jsonl_zst(local_in / "books.jsonl.zst", [record(book(i, 6)) for i in range(1, 7)] + [b"{broken"])
    with open(path, "rb") as f:
        client.put_object(Bucket=BUCKET, Key="raw/books.jsonl.zst", Body=f.read())
    client.put_object(Bucket=BUCKET, Key="tok/tokenizer.model", Body=open(bpe_model, "rb").read())

    common = dict(seq_lens=(512,), shard_tokens=2048, runner="DirectRunner", direct_running_mode="in_memory")
    remote = run_books(BooksOptions(
        inputs=(f"s3://{BUCKET}/raw/*.jsonl.zst",), output=f"s3://{BUCKET}/out", tokenizer=f"s3://{BUCKET}/tok/tokenizer.model",
        beam_args=flags, **common,
    ))
    local = run_books(BooksOptions(inputs=(path,), output=str(tmp_path / "local"), tokenizer=bpe_model, **common))

    keys = _keys(client, "out/")
    assert "out/manifest.json" in keys and "out/failures.jsonl" in keys
    assert not [k for k in keys if ".tmp-" in k], keys  # nothing half-written is left behind
    assert remote["documents"] == local["documents"] == 6
    assert remote["failures"]["by_reason"] == {"read:invalid_json": 1}
    failures = client.get_object(Bucket=BUCKET, Key="out/failures.jsonl")["Body"].read().decode()
    assert json.loads(failures.splitlines()[0])["line"] == 7

    # The Grain loader reads the s3:// directory from a verified local copy, record for record.
    cache = tmp_path / "cache"
    remote_src = ShardDataSource(f"s3://{BUCKET}/out/packed-512", cache_dir=str(cache))
    local_src = ShardDataSource(str(tmp_path / "local" / "packed-512"))
    assert len(remote_src) == len(local_src) > 1
    for i in range(len(local_src)):
        for k, v in local_src[i].items():
            np.testing.assert_array_equal(remote_src[i][k], v, err_msg=f"record {i} field {k}")
    batches = list(make_loader(f"s3://{BUCKET}/out/packed-512", 2, seed=0, cache_dir=str(cache)))
    assert sum(b["tokens"].shape[0] for b in batches) == len(local_src) // 2 * 2


def test_a_corrupted_remote_shard_is_refused_by_its_checksum(s3, tmp_path, bpe_model):
    url, client, flags = s3
    local_in = tmp_path / "in"
    local_in.mkdir()
    path = write_jsonl_zst(local_in / "books.jsonl.zst", [record(book(i, 4)) for i in range(1, 4)])
    client.put_object(Bucket=BUCKET, Key="raw2/books.jsonl.zst", Body=open(path, "rb").read())
    run_books(BooksOptions(
        inputs=(f"s3://{BUCKET}/raw2/*.jsonl.zst",), output=f"s3://{BUCKET}/out2", tokenizer=bpe_model,
        seq_lens=(512,), direct_running_mode="in_memory", beam_args=flags,
    ))
    shard = next(k for k in _keys(client, "out2/packed-512/") if ".array_record-" in k)
    body = bytearray(client.get_object(Bucket=BUCKET, Key=shard)["Body"].read())
    body[-100] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=shard, Body=bytes(body))
    with pytest.raises(RecordError, match="SHA-256"):
        ShardDataSource(f"s3://{BUCKET}/out2/packed-512", cache_dir=str(tmp_path / "cache"))
    # Nothing that looks complete was left in the cache: the next reader copies again.
    assert not list((tmp_path / "cache").rglob("manifest.json"))


def test_the_work_store_on_s3_resumes_retries_and_is_discarded(s3, tmp_path, bpe_model, monkeypatch):
    """Units and shard receipts live on S3 with the output; a resumed run reads them back there."""
    from lwmkit.pipelines.books import job as books_lib

    from .faults import Faulty

    url, client, flags = s3
    local_in = tmp_path / "in"
    local_in.mkdir()
    path = write_jsonl_zst(local_in / "books.jsonl.zst", [record(book(i, 5)) for i in range(1, 6)])
    client.put_object(Bucket=BUCKET, Key="raw3/books.jsonl.zst", Body=open(path, "rb").read())
    state = tmp_path / "calls"
    state.mkdir()
    real = books_lib.Tokenize
    fail_on = {("books.jsonl.zst", 2): None}
    monkeypatch.setattr(books_lib, "Tokenize", lambda tok: Faulty(real(tok), str(state), fail_on=fail_on))

    def run(**kw):
        return run_books(BooksOptions(
            inputs=(f"s3://{BUCKET}/raw3/*.jsonl.zst",), output=f"s3://{BUCKET}/out3", tokenizer=bpe_model,
            seq_lens=(512,), shard_tokens=2048, direct_running_mode="in_memory", beam_args=flags, **kw,
        ))

    first = run()
    assert first["failures"]["by_reason"] == {"tokenize:stage_error": 1}
    assert [k for k in _keys(client, "out3/.work/units/") if k.endswith(".json")]
    fail_on.clear()
    for f in state.iterdir():
        f.unlink()
    second = run(retry_failures=True, keep_work=False)
    assert {f.name for f in state.iterdir() if f.name.startswith("attempt-")} == {"attempt-books.jsonl.zst-2"}
    assert second["retry"] == {"rows": 1, "recovered": 1, "still_failing": 0} and second["documents"] == 5
    assert _keys(client, "out3/.work/") == []  # --discard-work: nothing of the store is left
    run_books(BooksOptions(inputs=(path,), output=str(tmp_path / "local"), tokenizer=bpe_model, seq_lens=(512,),
                           shard_tokens=2048, direct_running_mode="in_memory"))
    for name in sorted(p.name for p in (tmp_path / "local" / "packed-512").glob("*.array_record-*")):
        body = client.get_object(Bucket=BUCKET, Key=f"out3/packed-512/{name}")["Body"].read()
        assert body == (tmp_path / "local" / "packed-512" / name).read_bytes(), name
