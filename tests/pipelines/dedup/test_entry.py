"""NearDedup, the call a job makes: survivors, failure rows naming the kept twin, counts; kinds and
options validated; unsketchable examples kept."""

import io
import json
import random

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from lwmkit.pipelines.dedup import (
    REASON,
    Duplicate,
    ImageHashConfig,
    MinHashConfig,
    NearDedup,
    NearDedupOptions,
    duplicate_summary,
)
from lwmkit.pipelines.dedup.planted import plant_copies

from tests.pipelines.dedup.test_images import drawn_scene
from tests.pipelines.dedup.test_text import random_book


def _jsonable(value):
    if isinstance(value, Duplicate):
        return value.to_json()
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        return [value[0], {k: v for k, v in value[1].items() if isinstance(v, str | int)}]
    return value


def _run(tmp_path, examples, options, **kw):
    """Runs NearDedup in a Beam pipeline; returns each output as a list read back from its file."""
    with beam.Pipeline(options=PipelineOptions(["--direct_running_mode=in_memory"])) as p:
        out = p | beam.Create(examples) | NearDedup(options, **kw)
        for name in ("survivors", "failures", "counts", "duplicates"):
            (getattr(out, name)
             | f"json {name}" >> beam.Map(lambda v: json.dumps(_jsonable(v), sort_keys=True))
             | f"write {name}" >> beam.io.WriteToText(str(tmp_path / name), shard_name_template="", num_shards=1))
    return {name: [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
            for name in ("survivors", "failures", "counts", "duplicates")}


def test_books_survivors_and_failure_rows(tmp_path):
    rng = random.Random(0)
    books = {f"b{i}": random_book(rng, 2000) for i in range(6)}
    docs, truth = plant_copies(books, per_edit=1, seed=3)
    examples = [(k, {"file": f"{k}.jsonl", "line": 1, "text": t}) for k, t in sorted(docs.items())]
    r = _run(tmp_path, examples, NearDedupOptions("text"))
    assert sorted(k for k, _ in r["survivors"]) == sorted(books)
    rows = sorted(r["failures"], key=lambda row: row["file"])
    assert [(row["file"], row["kept"]) for row in rows] == [(f"{c}.jsonl", o) for c, o, _ in truth]
    for row in rows:
        assert row["stage"] == "near_dedup" and row["reason"] == REASON == "dedup:near_duplicate"
        assert 0.8 <= row["similarity"] <= 1.0 and f"near copy of {row['kept']}" in row["detail"]
        json.dumps(row)  # a failures.jsonl row
    assert r["counts"] == [["near_dedup", [len(docs), len(books), len(truth)]]]
    assert {d["key"] for d in r["duplicates"]} == {c for c, _, _ in truth}


def test_images_content_function_and_undecodable_kept(tmp_path):
    def png(image):
        buf = io.BytesIO()
        image.save(buf, "PNG")
        return buf.getvalue()

    a, b = drawn_scene(1), drawn_scene(2)
    examples = [("a", {"bytes": png(a)}), ("a-small", {"bytes": png(a.resize((160, 120)))}),
                ("b", {"bytes": png(b)}), ("broken", {"bytes": b"not an image"})]
    r = _run(tmp_path, examples, NearDedupOptions("image", ImageHashConfig(), stage="near_dedup_images"),
             content=lambda ex: ex["bytes"])
    assert sorted(k for k, _ in r["survivors"]) == ["a", "b", "broken"]
    [row] = r["failures"]
    assert (row["file"], row["line"], row["kept"], row["stage"]) == ("a-small", 0, "a", "near_dedup_images")
    assert r["counts"] == [["near_dedup_images", [4, 3, 1]]]


def test_nothing_to_remove_gives_zero_counts(tmp_path):
    r = _run(tmp_path, [("x", {"text": "one short text"}), ("y", {"text": "something else entirely"})], NearDedupOptions("text"))
    assert sorted(k for k, _ in r["survivors"]) == ["x", "y"] and r["failures"] == [] and r["duplicates"] == []
    assert r["counts"] == [["near_dedup", [2, 2, 0]]]


def test_options_are_validated():
    with pytest.raises(ValueError, match="kind must be one of"):
        NearDedupOptions("audio")
    with pytest.raises(ValueError, match="must be a MinHashConfig, got ImageHashConfig"):
        NearDedupOptions("text", ImageHashConfig())
    p = NearDedupOptions("text", MinHashConfig(threshold=0.7)).params()
    assert (p["kind"], p["threshold"], p["method"]) == ("text", 0.7, "minhash-lsh")


def test_duplicate_summary_histogram_and_cluster_sizes():
    s = duplicate_summary([Duplicate("b", "a", 0.93, 2), Duplicate("c", "x", 1.0, 3), Duplicate("d", "x", 0.85, 3)],
                          bins=5)
    assert s == {"removed": 3, "histogram": {"low": 0.5, "high": 1.0, "counts": [0, 0, 0, 1, 2]},
                 "cluster_sizes": {"2": 1, "3": 1}}
