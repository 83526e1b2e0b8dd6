"""Runs near-dedup stages in a real Beam pipeline and returns what they wrote (shared by the dedup tests)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from lwmkit.pipelines.dedup import NearDuplicates, TextSketches


def _sorted_lines(rows: list[dict]) -> list[str]:
    return [json.dumps(r, sort_keys=True) for r in sorted(rows, key=lambda r: r["key"])]


def run_text(docs: Iterable[tuple[str, str]], matcher, out: Path, mode: str = "in_memory",
             exact: bool = False) -> list[dict]:
    """(key, text) docs -> TextSketches -> NearDuplicates, written as sorted JSON lines to `out`."""
    opts = _options(mode)
    with beam.Pipeline(options=opts) as p:
        texts = p | "docs" >> beam.Create(list(docs))
        sketches = texts | TextSketches(matcher.config)
        dups = sketches | NearDuplicates(matcher, texts=texts if exact else None)
        _write(dups, out)
    return read_rows(out)


def run_sketches(sketches: list, matcher, out: Path, mode: str = "in_memory") -> list[dict]:
    """Sketches -> NearDuplicates, written as sorted JSON lines to `out`."""
    opts = _options(mode)
    with beam.Pipeline(options=opts) as p:
        dups = p | "sketches" >> beam.Create(sketches) | NearDuplicates(matcher)
        _write(dups, out)
    return read_rows(out)


def _options(mode: str) -> PipelineOptions:
    workers = ["--direct_num_workers=2"] if mode == "multi_processing" else []
    return PipelineOptions([f"--direct_running_mode={mode}", *workers])


def _write(dups, out: Path) -> None:
    (dups
     | "rows" >> beam.Map(lambda d: d.to_json())
     | "all" >> beam.combiners.ToList()
     | "sort" >> beam.Map(lambda rows: "\n".join(_sorted_lines(rows)))  # one element: one order
     | "write" >> beam.io.WriteToText(str(out), shard_name_template="", num_shards=1))


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in Path(out).read_text().splitlines() if line]
