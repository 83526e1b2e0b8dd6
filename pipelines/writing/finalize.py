"""The job's last step: reconcile counts, then write manifests, indexes and the failures file.

Runs once, after every shard is written. It refuses to write a manifest when counts do not add
up (a stage saw fewer records than the one before it emitted, or the packed shards hold a different
number of tokens than the documents), so an output with a manifest is an output that lost nothing.

Files written: `<out>/failures.jsonl` (one row per dropped record, sorted), `<out>/manifest.json`
(kind "job"), and per dataset directory `manifest.json`, `dataset_info.json`, `features.json` and
`documents.parquet`.
"""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from lwmkit.packing.records import (
    DOCUMENT_FORMAT,
    FORMAT_VERSION,
    PACKED_FORMAT,
    tfds_features_json,
)
from lwmkit.packing.shards import WRITER_OPTIONS, ShardInfo, dataset_info_json, dumps_json
from lwmkit.pipelines.engine.drops import failure_row, failure_sort_key
from lwmkit.pipelines.engine.outputs import delete_outputs, join, list_outputs, write_output_bytes
from lwmkit.pipelines.writing.plan import (
    DOCUMENTS,
    PackOptions,
    dataset_dir,
    packed_dir,
    record_location,
    tfds_name,
)

_STAGE_KEYS = ("seq_len", "records", "documents", "tokens", "fill", "rope_theta", "documents_long_enough", "min_doc_tokens")

FAILURES_FILE = "failures.jsonl"


@dataclass(frozen=True)
class StageChain:
    """How a job's stage counts must add up.

    `links` are (stage, previous stage): the stage's input count equals the previous stage's kept
    count. A stage in `grouped` receives groups, so its input count is kept + dropped. `last` is the
    stage whose kept count is the number of documents in the plan.
    """

    stages: tuple[str, ...]
    links: tuple[tuple[str, str], ...]
    last: str
    grouped: tuple[str, ...] = ()

    def with_stage(self, name: str, after: str) -> StageChain:
        """This chain with stage `name` right after `after`: `name` counts what `after` kept, and the
        stages that counted what `after` kept now count what `name` kept (near dedup's place in a job).

        Example: read -> dedup -> decode, with_stage("near_dedup", "dedup")
                 -> read -> dedup -> near_dedup -> decode
        """
        i = self.stages.index(after) + 1
        links = tuple((s, name if prev == after else prev) for s, prev in self.links) + ((name, after),)
        last = name if self.last == after else self.last
        return StageChain((*self.stages[:i], name, *self.stages[i:]), links, last, self.grouped)


def recommended_rope_theta(seq_len: int) -> float:
    """RoPE theta for a text stage of seq_len tokens, following LWM's progressive training."""
    for limit, theta in ((4096, 1e4), (32768, 1e6), (262144, 1e7), (524288, 2.5e7)):
        if seq_len <= limit:
            return theta
    return 5e7


class CountMismatchError(RuntimeError):
    """Records were lost between stages; no manifest is written."""


def _sum_counts(counts: Sequence[tuple[str, tuple[int, int, int]]], stages: Sequence[str]) -> dict:
    out = {s: {"seen": 0, "kept": 0, "dropped": 0} for s in stages}
    for stage, (seen, kept, dropped) in counts:
        c = out.setdefault(stage, {"seen": 0, "kept": 0, "dropped": 0})
        c["seen"] += seen
        c["kept"] += kept
        c["dropped"] += dropped
    return out


def reconcile(stages: dict[str, dict[str, int]], chain: StageChain, plan: dict, shards: Sequence[dict]) -> list[str]:
    """Returns the count mismatches (empty when nothing was lost)."""
    problems = []
    for stage, before in chain.links:
        c = stages[stage]
        received = c["kept"] + c["dropped"] if stage in chain.grouped else c["seen"]
        if received != stages[before]["kept"]:
            problems.append(f"stage {stage} received {received} records, {before} kept {stages[before]['kept']}")
    if stages[chain.last]["kept"] != len(plan["docs"]):
        problems.append(f"{chain.last} kept {stages[chain.last]['kept']} documents, the plan has {len(plan['docs'])}")
    by_dataset: dict[str, dict[str, int]] = {}
    for s in shards:
        agg = by_dataset.setdefault(s["dataset"], {"records": 0, "tokens": 0})
        agg["records"] += s["records"]
        agg["tokens"] += s["tokens"]
    if plan["docs"] and plan["write_documents"]:
        got = by_dataset.get(DOCUMENTS, {}).get("records", 0)
        if got != len(plan["docs"]):
            problems.append(f"document shards hold {got} records, the plan has {len(plan['docs'])}")
    for seq_len, p in plan["packed"].items():
        agg = by_dataset.get(packed_dir(seq_len), {"records": 0, "tokens": 0})
        if agg["records"] != len(p["bins"]):
            problems.append(f"{packed_dir(seq_len)} holds {agg['records']} records, the plan has {len(p['bins'])}")
        expected = (sum(plan["docs"][i]["tokens"] for i in p["eligible"]) - p["cuts"]["tokens_dropped"]
                    + p["cuts"].get("condition_tokens_repeated", 0))
        if agg["tokens"] != expected:
            problems.append(f"{packed_dir(seq_len)} holds {agg['tokens']} tokens, expected {expected}")
    return problems


def _documents_table(plan: dict, seq_len: int | None):
    import pyarrow as pa

    docs = plan["docs"]
    cols: dict[str, Any] = {
        "doc_id": pa.array([d["doc_id"] for d in docs], pa.int64()),
        "source_file": pa.array([d["file"] for d in docs], pa.string()),
        "source_line": pa.array([d["line"] for d in docs], pa.int64()),
        "chars": pa.array([d["chars"] for d in docs], pa.int64()),
        "tokens": pa.array([d["tokens"] for d in docs], pa.int64()),
        "meta": pa.array([d["meta"] for d in docs], pa.string()),
    }
    if seq_len is None:
        starts = [0]
        for n in plan["doc_shard_lengths"]:
            starts.append(starts[-1] + n)
        cols["shard"] = pa.array(plan["doc_shard"], pa.int32())
        cols["record"] = pa.array(plan["doc_local"], pa.int64())
        cols["index"] = pa.array([starts[s] + r for s, r in zip(plan["doc_shard"], plan["doc_local"], strict=True)], pa.int64())
    else:
        p = plan["packed"][seq_len]
        pieces: list[list[dict]] = [[] for _ in docs]
        for r, bin_ in enumerate(p["bins"]):
            shard, local = record_location(p["shard_starts"], r)
            for j, (doc, offset, length, prefix) in enumerate(bin_):
                pieces[doc].append(
                    {"shard": shard, "record": local, "index": r, "segment": j, "offset": offset, "length": length,
                     "prefix": prefix}
                )
        for lst in pieces:
            lst.sort(key=lambda x: x["offset"])
        piece_type = pa.struct(
            [("shard", pa.int32()), ("record", pa.int64()), ("index", pa.int64()), ("segment", pa.int32()),
             ("offset", pa.int64()), ("length", pa.int64()), ("prefix", pa.int64())]
        )
        cols["pieces"] = pa.array(pieces, pa.list_(piece_type))
    return pa.table(cols)


def _parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _failure_summary(failures: Sequence[dict]) -> dict[str, int]:
    by_reason: dict[str, int] = {}
    for f in failures:
        key = f"{f['stage']}:{f['reason']}"
        by_reason[key] = by_reason.get(key, 0) + 1
    return dict(sorted(by_reason.items()))


class FinalizeDoFn(beam.DoFn):
    """Writes every manifest and index once all shards exist; see the module docstring.

    Args:
      output: the job's output directory.
      job: what the manifest records about the job (options, tokenizer fingerprint, runner, ...).
      chain: the job's stages and how their counts add up.
      pack: the packing options, recorded in each packed manifest.
      kind: the job manifest's kind ("job", or "stages" for progressive stages).
      retried: with --retry-failures, the earlier run's failure rows that were processed again.
    """

    def __init__(self, output: str, job: dict[str, Any], chain: StageChain, pack: PackOptions, kind: str = "job",
                 retried: Sequence[dict] | None = None):
        self.output = output
        self.job = job
        self.chain = chain
        self.pack = pack
        self.kind = kind
        self.retried = None if retried is None else [(r["file"], r["line"]) for r in retried]

    def _packing_failures(self, plan) -> list[dict[str, Any]]:
        """Documents a long-document policy kept out of a packed dataset (they stay in documents/)."""
        rows = []
        for seq_len, p in plan["packed"].items():
            for doc, reason, detail in p["dropped"]:
                d = plan["docs"][doc]
                rows.append(failure_row(f"pack-{seq_len}", d["file"], d["line"], reason, detail))
        return rows

    def process(self, _, plan, shards, failures, counts, entries=()):
        failures = sorted(list(failures) + self._packing_failures(plan), key=failure_sort_key)
        write_output_bytes(
            join(self.output, FAILURES_FILE),
            b"".join(json.dumps(f, sort_keys=True, ensure_ascii=False).encode() + b"\n" for f in failures),
        )
        stages = _sum_counts(counts, self.chain.stages)
        failure_info = {"file": FAILURES_FILE, "total": len(failures), "by_reason": _failure_summary(failures)}
        now = {"finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        datasets: dict[str, dict[str, Any]] = {}
        if plan["docs"]:
            problems = reconcile(stages, self.chain, plan, shards)
            if problems:
                raise CountMismatchError("records were lost; no manifest written: " + "; ".join(problems))
            datasets = self._write_datasets(plan, shards, stages, failure_info, now)
        job_manifest = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "documents": len(plan["docs"]),
            "datasets": {k: {"records": v["records"], "fill": v.get("fill")} for k, v in datasets.items()},
            "stages": stages,
            "failures": failure_info,
            **self.job,
            **dict(sorted(entries)),
            "timestamps": now,
        }
        if self.retried is not None:
            still = {(f["file"], f["line"]) for f in failures}
            recovered = sum(1 for key in set(self.retried) if key not in still)
            job_manifest["retry"] = {"rows": len(set(self.retried)), "recovered": recovered,
                                     "still_failing": len(set(self.retried)) - recovered}
        if self.kind == "stages":
            job_manifest["stages_schedule"] = [
                {k: v for k, v in datasets[packed_dir(n)].items() if k in _STAGE_KEYS} for n in plan["packed"] if packed_dir(n) in datasets
            ]
        write_output_bytes(join(self.output, "manifest.json"), dumps_json(job_manifest))
        yield job_manifest

    def _write_datasets(self, plan, shards, stages, failure_info, now) -> dict[str, dict[str, Any]]:
        docs = plan["docs"]
        doc_tokens = sum(d["tokens"] for d in docs)
        out: dict[str, dict[str, Any]] = {}
        seq_lens = ([None] if plan["write_documents"] else []) + list(plan["packed"])
        for seq_len in seq_lens:
            dataset = dataset_dir(seq_len)
            mine = sorted((s for s in shards if s["dataset"] == dataset), key=lambda s: s["shard"])
            infos = [ShardInfo.from_json(s) for s in mine]
            records = sum(s.records for s in infos)
            manifest: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "dataset_name": tfds_name(dataset),
                "records": records,
                "documents": len(docs),
                "shards": [i.to_json() for i in infos],
                "shard_writer_options": WRITER_OPTIONS,
            }
            if seq_len is None:
                vision = sum(s["vision_tokens"] for s in mine)
                manifest.update(
                    kind="document",
                    record_format=DOCUMENT_FORMAT,
                    seq_len=None,
                    tokens={"total": doc_tokens, "text": doc_tokens - vision, "vision": vision},
                )
                features = tfds_features_json("document")
                description = "lwmkit document records (one tokenized document each)"
            else:
                p = plan["packed"][seq_len]
                tokens = sum(s["tokens"] for s in mine)
                vision = sum(s["vision_tokens"] for s in mine)
                w_text = sum(s["loss_weight_text"] for s in mine)
                w_vision = sum(s["loss_weight_vision"] for s in mine)
                hist: dict[str, int] = {}
                for s in mine:
                    for k, v in s["segments_per_record"].items():
                        hist[k] = hist.get(k, 0) + v
                manifest.update(
                    kind="packed",
                    record_format=PACKED_FORMAT,
                    seq_len=seq_len,
                    documents=len(p["eligible"]) - p["cuts"]["documents_dropped"],
                    tokens={"total": tokens, "text": tokens - vision, "vision": vision, "padding": sum(s["padding"] for s in mine)},
                    fill=round(tokens / (records * seq_len), 6) if records else 0.0,
                    segments=sum(s["segments"] for s in mine),
                    segments_per_record=dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
                    zero_loss={
                        "segments": sum(s.get("segments_zero_loss", 0) for s in mine),
                        "records": sum(s.get("records_zero_loss", 0) for s in mine),
                    },
                    loss_weight_sum=round(w_text + w_vision, 3),
                    loss_weight_by_modality={"text": round(w_text, 3), "vision": round(w_vision, 3)},
                    packing={**self.pack.to_json(), "documents_split": p["cuts"]["documents_split"]},
                    cuts=p["cuts"],
                    min_doc_tokens=p["min_doc_tokens"],
                    documents_long_enough=p["documents_long_enough"],
                    rope_theta=recommended_rope_theta(seq_len),
                )
                features = tfds_features_json("packed", seq_len)
                description = f"lwmkit packed records of {seq_len} tokens (masked sequence packing)"
            manifest.update(self.job)
            manifest["stages"] = stages
            manifest["failures"] = {**failure_info, "file": f"../{FAILURES_FILE}"}
            manifest["timestamps"] = now
            base = join(self.output, dataset)
            listed = {i.file for i in infos}
            stale = [
                p for p in list_outputs(join(base, f"{tfds_name(dataset)}-*.array_record-*"))
                if p.rsplit("/", 1)[-1] not in listed
            ]
            delete_outputs(stale)  # shards of an earlier run with another shard count
            write_output_bytes(join(base, "documents.parquet"), _parquet_bytes(_documents_table(plan, seq_len)))
            write_output_bytes(join(base, "features.json"), dumps_json(features))
            write_output_bytes(
                join(base, "dataset_info.json"), dumps_json(dataset_info_json(tfds_name(dataset), infos, description))
            )
            # The manifest goes last: its presence marks the directory complete.
            write_output_bytes(join(base, "manifest.json"), dumps_json(manifest))
            out[dataset] = manifest
        return out
