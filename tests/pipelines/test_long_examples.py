"""Examples longer than a record, end to end: packing never makes a segment that trains nothing or the wrong thing.

One module-scoped run of the videos job (tiny VQGAN, in-memory DirectRunner) on generated clips of
80, 16, 20 and 2 frames (sampled at 10 fps) plus ../shared/data/video/tree.avi (68 frames at 15 fps)
when present: understanding, generation and chat examples of 500 to 21,000 tokens, packed at 1,024,
2,048 and 4,096 under the default `by_kind` policy. The checks rebuild every segment from its
document and recount the manifest's numbers from the records. The pack job then re-packs the same
documents under the old `split` policy (its zero-loss segments are counted, not hidden) and through
the online packer (record for record the offline one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from lwmkit.packing import ShardDataSource, check_packed
from lwmkit.packing.cuts import infer_shape
from lwmkit.packing.online import online_packed_dataset
from lwmkit.packing.records import zero_loss_segments
from lwmkit.pipelines.pack.job import StagesOptions, run_stages
from lwmkit.pipelines.videos.frames import DecodeOptions
from lwmkit.pipelines.videos.index import FrameSampling
from lwmkit.pipelines.videos.job import VideosOptions, run_videos
from lwmkit.pipelines.videos.sources import VideoSourceOptions
from lwmkit.pipelines.writing.plan import PackOptions

from .helpers import SHARED_DATA
from .video_inputs import write_clip

TREE = SHARED_DATA / "video" / "tree.avi"
SEQ_LENS = (1024, 2048, 4096)
SEED = 3
CHAT = [{"from": "human", "value": "<video>\nWhat is on screen?"}, {"from": "gpt", "value": "Stripes that move."},
        {"from": "human", "value": "Do they change?"}, {"from": "gpt", "value": "Yes, every frame."}]
FIELDS = ("tokens", "vision_mask", "loss_weights", "tokens_segment_ids", "tokens_positions",
          "segment_doc_ids", "segment_offsets", "segment_lengths", "segment_prefix_lengths")


@pytest.fixture(scope="module")
def built(tmp_path_factory, bpe_model):
    d = tmp_path_factory.mktemp("long")
    rows = []
    # keys picked so that choose_kind(key, SEED, 0.5) gives both kinds: U understanding, G generation
    for name, frames, caption, key in [("long", 80, "A long striped clip", "long"),  # U
                                       ("mid", 16, "A mid striped clip", "mid"),  # U
                                       ("small", 2, "A short clip", "small"),  # U
                                       ("more", 40, "More stripes moving", "other-u"),  # G
                                       ("other", 30, "Other stripes", "small-u")]:  # G
        write_clip(d / f"{name}.mp4", n=frames, fps=10)
        rows.append({"path": f"{name}.mp4", "caption": caption, "key": key})
    write_clip(d / "chat.mp4", n=20, fps=10)
    rows.append({"path": "chat.mp4", "conversations": CHAT})
    if TREE.exists():
        rows.append({"path": str(TREE), "caption": "A tree through a window"})
    (d / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "out"
    manifest = run_videos(VideosOptions(
        inputs=(str(d / "list.jsonl"),), output=str(out), tokenizer=bpe_model, vqgan_preset="tiny", seq_lens=SEQ_LENS,
        generation_fraction=0.5, seed=SEED, sources=VideoSourceOptions(allow_local=True),
        decode=DecodeOptions(FrameSampling("fps", fps=10.0)), batch_size=8, shard_tokens=1 << 16,
    ))
    return out, manifest, bpe_model


def _records(directory) -> list[dict]:
    src = ShardDataSource(str(directory))
    return [src[i] for i in range(len(src))]


def _documents(out: Path) -> dict[int, dict]:
    docs = {}
    for rec in _records(out / "documents"):
        spans = [tuple(map(int, s)) for s in rec["atomic_spans"].reshape(-1, 2)]
        rec["shape"] = infer_shape(rec["vision_mask"], rec["loss_weights"], spans, rec["example_kind"], rec["prefix_length"])
        rec["spans"] = spans
        docs[rec["doc_id"]] = rec
    return docs


def _segments(record: dict):
    """(doc_id, offset, prefix, the segment's token slice) of each segment of a packed record."""
    start = 0
    for doc_id, offset, length, prefix in zip(record["segment_doc_ids"], record["segment_offsets"],
                                              record["segment_lengths"], record["segment_prefix_lengths"], strict=True):
        yield int(doc_id), int(offset), int(prefix), slice(start, start + int(length))
        start += int(length)


def _cut_points(doc: dict) -> set[int]:
    """Where a document may be cut: not strictly inside any atomic span."""
    inside = {t for a, b in doc["spans"] for t in range(a + 1, b)}
    return set(range(len(doc["tokens"]) + 1)) - inside


def test_the_corpus_holds_every_kind_longer_than_a_record(built):
    out, _, _ = built
    kinds = {}
    for doc in _documents(out).values():
        kinds.setdefault(doc["shape"].kind, []).append(len(doc["tokens"]))
    assert set(kinds) == {"understanding", "generation", "chat"}
    assert all(max(lengths) > 1024 for lengths in kinds.values())
    assert max(max(v) for v in kinds.values()) > 20_000  # 80 frames x 257 tokens


@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_every_segment_is_its_documents_tokens_and_trains_something(built, seq_len):
    out, _, _ = built
    docs = _documents(out)
    records = _records(out / f"packed-{seq_len}")
    assert records
    for r in records:
        assert check_packed(r, seq_len) == []
        for doc_id, offset, prefix, sl in _segments(r):
            doc = docs[doc_id]
            body = sl.stop - sl.start - prefix
            np.testing.assert_array_equal(
                r["tokens"][sl], np.concatenate([doc["tokens"][:prefix], doc["tokens"][offset : offset + body]])
            )
            # nothing is cut inside a frame or a turn
            assert offset in _cut_points(doc) and offset + body in _cut_points(doc)
            assert r["loss_weights"][sl].sum() > 0, f"segment of {doc['shape'].kind} doc {doc_id} trains nothing"
            assert not r["loss_weights"][sl][:prefix].any()


@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_generated_vision_always_follows_its_caption(built, seq_len):
    out, _, _ = built
    docs = _documents(out)
    checked = 0
    for r in _records(out / f"packed-{seq_len}"):
        for doc_id, offset, prefix, sl in _segments(r):
            doc = docs[doc_id]
            trained_vision = r["vision_mask"][sl] & (r["loss_weights"][sl] > 0)
            if doc["shape"].kind != "generation" or not trained_vision.any():
                continue
            condition = doc["shape"].prefix  # BOS, the caption, "<vision>"
            first_vision = int(np.argmax(r["vision_mask"][sl]))
            assert first_vision >= condition
            np.testing.assert_array_equal(r["tokens"][sl][:condition], doc["tokens"][:condition])
            assert offset == 0 or prefix == condition
            checked += 1
    assert checked


def _recount(out: Path, seq_len: int, docs: dict[int, dict]) -> dict[str, int]:
    counts = {"segments": 0, "records": 0, "frames_dropped": 0, "condition_tokens_repeated": 0,
              "documents_tail_kept": 0}
    repeated: set[int] = set()
    for r in _records(out / f"packed-{seq_len}"):
        zero = zero_loss_segments(r)
        counts["segments"] += zero
        counts["records"] += zero == len(r["segment_lengths"])
        for doc_id, offset, prefix, _ in _segments(r):
            doc = docs[doc_id]
            if prefix and doc["shape"].kind == "generation":
                counts["condition_tokens_repeated"] += prefix
                repeated.add(doc_id)
            elif prefix:
                counts["documents_tail_kept"] += 1
                counts["frames_dropped"] += sum(1 for _, e in doc["spans"][: doc["shape"].frames] if e <= offset)
    counts["documents_condition_repeated"] = len(repeated)
    return counts


@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_manifest_counts_equal_a_recount_from_the_records(built, seq_len):
    out, _, _ = built
    docs = _documents(out)
    m = json.loads((out / f"packed-{seq_len}" / "manifest.json").read_text())
    got = _recount(out, seq_len, docs)
    assert m["zero_loss"] == {"segments": got["segments"], "records": got["records"]} == {"segments": 0, "records": 0}
    for key in ("frames_dropped", "condition_tokens_repeated", "documents_tail_kept", "documents_condition_repeated"):
        assert m["cuts"][key] == got[key], key
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    dropped = [f for f in failures if f["stage"] == f"pack-{seq_len}"]
    assert m["cuts"]["documents_dropped"] == len(dropped)
    placed = {int(i) for r in _records(out / f"packed-{seq_len}") for i in r["segment_doc_ids"]}
    too_long_chats = [d for d in docs.values() if d["shape"].kind == "chat" and len(d["tokens"]) > seq_len]
    assert {f["reason"] for f in dropped} <= {"too_long", "tail_too_long", "frame_too_long", "atomic_span_too_long"}
    assert all(d["doc_id"] not in placed for d in too_long_chats)  # chat examples are dropped, not cut
    assert len(placed) + len(dropped) == len(docs)


def test_the_shortest_stage_shows_each_policy_at_work(built):
    out, _, _ = built
    m = json.loads((out / "packed-1024" / "manifest.json").read_text())
    c = m["cuts"]
    assert c["documents_tail_kept"] > 0 and c["frames_dropped"] > 0
    assert c["documents_condition_repeated"] > 0 and c["condition_tokens_repeated"] > 0
    assert c["documents_dropped"] >= 1  # the chat video (20 frames) does not fit 1,024 tokens
    assert m["packing"]["policy"] == "by_kind"


def test_the_split_policy_still_works_and_its_zero_loss_segments_are_counted(built, tmp_path):
    out, _, _ = built
    stages = tmp_path / "split"
    run_stages(StagesOptions(documents=str(out / "documents"), output=str(stages), schedule=(2048,),
                             pack=PackOptions(policy="split")))
    docs = _documents(out)
    m = json.loads((stages / "packed-2048" / "manifest.json").read_text())
    got = _recount(stages, 2048, docs)
    assert m["packing"]["policy"] == "split"
    assert m["zero_loss"] == {"segments": got["segments"], "records": got["records"]}
    assert got["segments"] > 0  # what the issue measured: understanding pieces without their caption


def test_online_packer_gives_the_offline_records_for_long_examples(built, tmp_path):
    out, _, _ = built
    stages = tmp_path / "windowed"
    run_stages(StagesOptions(documents=str(out / "documents"), output=str(stages), schedule=(2048,),
                             pack=PackOptions(window=3, seed=2, top_up_below=None, piece_positions="continue")))
    offline = _records(stages / "packed-2048")
    online = list(online_packed_dataset(os.fspath(out / "documents"), 2048, window=3, seed=2, piece_positions="continue"))
    assert len(online) == len(offline) > 3
    assert any(r["segment_prefix_lengths"].any() for r in offline)
    for a, b in zip(offline, online, strict=True):
        for f in FIELDS:
            np.testing.assert_array_equal(a[f], b[f], err_msg=f)
        assert check_packed(a, 2048, "continue") == []


def test_inspect_and_report_show_what_packing_did(built, tmp_path):
    import io

    from lwmkit.pipelines.tools.inspection import inspect
    from lwmkit.pipelines.tools.report import write_report

    out, _, _ = built
    m = json.loads((out / "packed-1024" / "manifest.json").read_text())
    text = io.StringIO()
    inspect(str(out), text, record=0)
    c = m["cuts"]
    line = next(x for x in text.getvalue().splitlines() if x.strip().startswith("packing by_kind") and
                f"frames dropped {c['frames_dropped']}" in x)
    assert f"documents tail kept {c['documents_tail_kept']}" in line and "zero-loss segments 0, records 0" in line
    assert "loss weight" in text.getvalue()  # each shown segment says what it trains
    page = write_report(str(out), str(tmp_path / "report"))
    html = Path(page).read_text()
    assert "frames dropped" in html and "condition tokens repeated" in html and "zero loss segments" in html


def test_v1_documents_written_before_kinds_existed_are_cut_by_their_derived_kind(built, tmp_path):
    """A documents/ directory of format v1 (no example_kind, no prefix_length) still packs by kind."""
    from lwmkit.packing.records import DOCUMENT_FORMAT_V1
    from lwmkit.packing.shards import write_json_atomic
    from lwmkit.packing.wire import encode_example

    from ..packing.helpers import write_dataset

    out, _, bpe_model = built
    docs = _documents(out)
    blobs = [encode_example({
        "format": [DOCUMENT_FORMAT_V1.encode()], "doc_id": [d["doc_id"]], "source_file": [d["source_file"].encode()],
        "source_line": [d["source_line"]], "tokens": [d["tokens"].tobytes()], "vision_mask": [d["vision_mask"].tobytes()],
        "loss_weights": [d["loss_weights"].tobytes()], "atomic_spans": [d["atomic_spans"].tobytes()],
    }) for d in docs.values()]
    v1 = tmp_path / "v1-documents"
    manifest = write_dataset(str(v1), blobs, kind="document", seq_len=None, documents=len(blobs))
    manifest.update(format_version=1, record_format=DOCUMENT_FORMAT_V1,
                    tokenizer=json.loads((out / "documents" / "manifest.json").read_text())["tokenizer"])
    write_json_atomic(str(v1 / "manifest.json"), manifest)
    stages = tmp_path / "from-v1"
    run_stages(StagesOptions(documents=str(v1), output=str(stages), schedule=(2048,)))
    records = _records(stages / "packed-2048")
    kinds = {d["doc_id"]: d["shape"].kind for d in docs.values()}
    prefixed = {kinds[int(i)] for r in records for i, p in zip(r["segment_doc_ids"], r["segment_prefix_lengths"],
                                                               strict=True) if p}
    # tails kept and conditions repeated, from v1 records (a v1 chat example reads as understanding)
    assert {"understanding", "generation"} <= prefixed
    assert all(zero_loss_segments(r) == 0 for r in records)
    m = json.loads((stages / "packed-2048" / "manifest.json").read_text())
    assert m["zero_loss"] == {"segments": 0, "records": 0} and m["record_format"] == "lwmkit.packed.v2"
