"""Dataflow dry runs through `lwm-pack`: each job's graph is built offline, without credentials.

Every test runs under the `offline` fixture: sockets refuse to connect or resolve, and a Google
credential look-up fails the test.
"""

from __future__ import annotations

import json
import tarfile

import pytest
from lwmkit.pipelines.cli import main
from lwmkit.pipelines.engine import dataflow

from .helpers import book, record, write_jsonl
from .offline import DATAFLOW, offline  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("offline")
IMAGE = DATAFLOW[DATAFLOW.index("--sdk_container_image") + 1]
GPU = [
    "--dataflow_service_options", "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
    "--worker_machine_type", "g2-standard-8",
]  # fmt: skip


@pytest.fixture(scope="module")
def books_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("dataflow-books") / "books.jsonl"
    return write_jsonl(path, [record(book(i, 4)) for i in range(3)])


def _books(books_file: str, tokenizer: str, output, *args: str) -> list[str]:
    return [
        "books",
        "--input",
        books_file,
        "--tokenizer",
        tokenizer,
        "--output",
        str(output),
        *args,
    ]


def _top_level(pipeline: dict) -> set[str]:
    return {t["uniqueName"] for t in pipeline["components"]["transforms"].values()}


def test_books_job_graph_has_every_stage_and_the_options(books_file, bpe_model, tmp_path, capsys):
    out, job_file = tmp_path / "out", tmp_path / "job.json"
    more = ["--seq-len", "256,512", "--machine_type", "n2-standard-8", "--max_num_workers", "7"]
    rc = main(
        _books(books_file, bpe_model, out, *DATAFLOW, *more, "--dataflow_job_file", str(job_file))
    )
    assert rc == 0
    report = capsys.readouterr().out
    from lwmkit.pipelines.books import job as books

    stages = (*books.STAGES, "plan", "write shards", "finalize")
    assert "graph built and checked, nothing submitted or written" in report
    assert " -> ".join(stages) in report
    assert not out.exists()  # a dry run writes nothing at the output

    document = json.loads(job_file.read_text())
    assert set(stages) <= _top_level(document["pipeline"])
    assert document["lwmkit"]["stages"] == list(stages)
    assert document["lwmkit"]["dofns"] >= len(stages)
    job = document["job"]
    assert job["type"] == "JOB_TYPE_BATCH" and job["name"].startswith("beamapp-")
    env = job["environment"]
    options = env["sdkPipelineOptions"]["options"]
    assert options["project"] == "lwm-test" and options["region"] == "us-central1"
    assert options["temp_location"].startswith("gs://lwm-test-bucket/tmp/")
    assert options["sdk_container_image"] == IMAGE and options["max_num_workers"] == 7
    assert options["dry_run"] == "True"
    pool = env["workerPools"][0]
    assert pool["machineType"] == "n2-standard-8"
    assert pool["workerHarnessContainerImage"] == IMAGE
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 7
    # Local paths are allowed for the check, and reported; lwmkit is in the worker image.
    warnings = document["lwmkit"]["warnings"]
    assert len(warnings) == 1
    assert f"--input {books_file}" in warnings[0] and f"--output {out}" in warnings[0]
    assert "--tokenizer" not in warnings[0]  # read by the launcher; its bytes travel with the job
    assert f"warning:  {warnings[0]}" in report


def _image_input(tmp_path) -> str:
    path = tmp_path / "pairs.tar"
    tarfile.open(path, "w").close()  # the launcher lists inputs; only workers read them
    return str(path)


def _video_input(tmp_path) -> str:
    path = tmp_path / "videos.csv"
    path.write_text("url,caption\nhttps://example.com/a.mp4,a clip\n")
    return str(path)


@pytest.mark.parametrize(
    "command, make_input, extra, module, warning",
    [
        ("images", _image_input, ["--vqgan-preset", "tiny", *GPU], "images.job", None),
        (
            "videos",
            _video_input,
            ["--vqgan-preset", "tiny"],
            "videos.job",
            "stage would run on CPU",
        ),
        ("qa", lambda tmp: None, ["--preset", "lwm-32k"], "qa.job", None),
    ],
)
def test_image_video_and_qa_job_graphs(
    command, make_input, extra, module, warning, books_file, bpe_model, tmp_path
):
    import importlib

    job_file = tmp_path / "job.json"
    source = make_input(tmp_path) or books_file
    rc = main([
        command, "--input", source, "--tokenizer", bpe_model, "--output", "gs://lwm-test-bucket/out",
        *extra, *DATAFLOW, "--dataflow_job_file", str(job_file),
    ])  # fmt: skip
    assert rc == 0
    document = json.loads(job_file.read_text())
    named = importlib.import_module(f"lwmkit.pipelines.{module}").STAGES
    # The video job's "frames" is the decode stage's second output, not a transform of its own.
    stages = (*(s for s in named if s != "frames"), *dataflow.FINAL_STAGES)
    assert set(stages) <= _top_level(document["pipeline"])
    assert document["lwmkit"]["stages"] == list(stages)
    env = document["job"]["environment"]
    messages = " ".join(document["lwmkit"]["warnings"])
    assert "--tokenizer" not in messages
    if extra[-len(GPU) :] == GPU:
        assert env["serviceOptions"] == [GPU[1]]
        assert env["workerPools"][0]["machineType"] == "g2-standard-8"
        assert "CPU" not in messages
    if warning:
        assert warning in messages


def test_packaging_lwmkit_for_the_workers(books_file, bpe_model, tmp_path, capsys):
    no_image = [a for a in DATAFLOW if a not in ("--sdk_container_image", IMAGE)]
    assert main(_books(books_file, bpe_model, "gs://lwm-test-bucket/o", *no_image)) == 0
    assert "workers would not have lwmkit" in capsys.readouterr().out

    wheel = tmp_path / "lwmkit-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"a wheel")  # staged as it is; only workers install it
    packaged = [*no_image, "--extra_package", str(wheel)]
    assert main(_books(books_file, bpe_model, "gs://lwm-test-bucket/o", *packaged)) == 0
    report = capsys.readouterr().out
    workers = next(line for line in report.splitlines() if line.startswith("  workers:"))
    assert "lwmkit-0.1.0-py3-none-any.whl" in workers and "would not have lwmkit" not in report


@pytest.mark.parametrize(
    "args, message",
    [
        (["--runner", "DirectRunner", "--dry_run=True"], "only --runner DataflowRunner"),
        ([*DATAFLOW, "--dry_run=False"], "Beam would treat it as true"),
        ([*DATAFLOW, "--project", "p"], "Invalid Project ID"),  # Beam's own check
        ([a.replace("lwm-test-bucket", "b") for a in DATAFLOW], "Invalid GCS bucket"),
        (
            [*DATAFLOW, "--extra_package", "/nonexistent/lwmkit.whl"],
            "/nonexistent/lwmkit.whl cannot be found",
        ),
    ],
)
def test_bad_options_fail_with_their_reason(args, message, books_file, bpe_model, tmp_path, capsys):
    assert main(_books(books_file, bpe_model, tmp_path / "o", *args)) == 1
    assert message in capsys.readouterr().err


def test_pack_has_no_dry_run(tmp_path, capsys):
    d = str(tmp_path)
    with pytest.raises(SystemExit):
        main(["pack", "--documents", d, "--schedule", "256", "--output", d, *DATAFLOW])
    assert "has no dry run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], False),
        (["--dry_run=True"], True),
        (["--dry_run", "true"], True),
        (["--project=p", "--dry_run=1"], True),
    ],
)
def test_dry_run_requested(args, expected):
    assert dataflow.dry_run_requested(args) is expected


@pytest.mark.parametrize("value", ["False", "0", "maybe"])
def test_dry_run_values_beam_would_misread_are_refused(value):
    with pytest.raises(ValueError, match="--dry_run"):
        dataflow.dry_run_requested([f"--dry_run={value}"])
