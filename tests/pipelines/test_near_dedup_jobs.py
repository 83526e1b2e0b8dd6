"""`--near-dedup` in the video job (a re-encoded copy of a clip removed after the download, another
clip kept) and in the QA job (a near-copy book removed before chunking, extractive generator), plus
the command-line flags of images, videos and qa reaching the job options."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from lwmkit.pipelines.cli import main
from lwmkit.pipelines.dedup.planted import change_words, reflow
from lwmkit.pipelines.videos.download import VideoDownloadOptions
from lwmkit.pipelines.videos.frames import DecodeOptions
from lwmkit.pipelines.videos.index import FrameSampling
from lwmkit.pipelines.videos.job import VideosOptions, run_videos

from .dedup.test_videos import encode, scene_frames
from .helpers import book, record, unset_proxies, write_jsonl
from .video_inputs import serve


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    unset_proxies(monkeypatch)


def _near_rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    return [r for r in rows if r["reason"] == "dedup:near_duplicate"]


def test_videos_a_reencoded_copy_is_removed_and_another_clip_kept(tmp_path, bpe_model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = scene_frames(3, 3.0, fps=10)
    clips = {
        "a.mp4": encode(tmp_path / "a.mp4", frames, 10),
        "a-copy.mp4": encode(tmp_path / "a-copy.mp4", frames, 10, size=(128, 96), bitrate=200_000),
        "b.mp4": encode(tmp_path / "b.mp4", scene_frames(4, 3.0, fps=10), 10),
    }
    with serve({k: Path(v).read_bytes() for k, v in clips.items()}) as server:
        urls = str(tmp_path / "urls.parquet")
        pq.write_table(pa.table({"url": [server.url(f"/v/{n}") for n in clips],
                                 "caption": ["a pan over a scene", "the same pan, re-encoded", "another scene"]}), urls)

        def run(out, **kw):
            return run_videos(VideosOptions(
                inputs=(urls,), output=str(tmp_path / out), tokenizer=bpe_model, vqgan_preset="tiny",
                seq_lens=(2048,), download=VideoDownloadOptions(timeout_s=5.0, retries=0, allowed_hosts=("127.0.0.1",)),
                decode=DecodeOptions(FrameSampling("count", num_frames=3), chunk_frames=2), batch_size=4,
                shard_tokens=4096, **kw))

        on = run("on", near_dedup=True)
        off = run("off")
    rows = _near_rows(tmp_path / "on")
    assert [(r["stage"], r["file"], r["line"], r["kept"]) for r in rows] == [("near_dedup", urls, 2, f"{urls}:1")]
    assert rows[0]["similarity"] >= 0.8
    assert on["documents"] == 2 and off["documents"] == 3 and _near_rows(tmp_path / "off") == []
    s = on["stages"]
    assert s["near_dedup"] == {"seen": s["download"]["kept"], "kept": 2, "dropped": 1}
    assert s["decode"]["seen"] == 2  # the copy was never decoded nor encoded
    assert on["near_dedup"]["removed"] == 1 and on["near_dedup"]["params"]["kind"] == "video"
    assert on["near_dedup"]["params"]["clip_threshold"] == 0.8
    assert "near_dedup" not in off and "near_dedup" not in off["options"]


def test_qa_a_near_copy_book_is_removed_before_chunking(tmp_path, bpe_model):
    texts = [book(500 + i, 40) for i in range(2)]
    rng = random.Random(3)
    copy = reflow(change_words(texts[0], rng), rng)
    path = write_jsonl(tmp_path / "books.jsonl", [record(t) for t in (*texts, copy)])

    def run(out, *extra) -> dict:
        argv = ["qa", "--input", path, "--tokenizer", bpe_model, "--output", str(tmp_path / out), "--preset", "tiny",
                "--generator", "extractive", "--seed", "5", "--quiet", *extra]
        assert main(argv) in (0, None)
        return json.loads((tmp_path / out / "manifest.json").read_text())

    on, off = run("on", "--near-dedup"), run("off")
    rows = _near_rows(tmp_path / "on")
    assert [(r["stage"], r["line"], r["kept"]) for r in rows] == [("near_dedup", 3, f"{path}:1")]
    assert rows[0]["similarity"] >= 0.8
    assert on["stages"]["near_dedup"]["kept"] == 2 and on["stages"]["near_dedup"]["dropped"] == 1
    assert on["stages"]["chunk"]["seen"] == 2 and off["stages"]["chunk"]["seen"] == 3  # never chunked
    assert on["near_dedup"]["removed"] == 1 and on["near_dedup"]["params"]["method"] == "minhash-lsh"
    assert on["options"]["near_dedup"] is True and "near_dedup" not in off["options"]
    assert on["qa"]["generation"]["pairs"] < off["qa"]["generation"]["pairs"]


@pytest.mark.parametrize("command, extra, want", [
    ("images", ["--near-dedup", "--near-threshold", "6"], (True, 6)),
    ("images", [], (False, 12)),
    ("videos", ["--near-dedup", "--near-threshold", "0.9"], (True, 0.9)),
    ("videos", [], (False, 0.8)),
    ("qa", ["--near-dedup", "--near-threshold", "0.7"], (True, 0.7)),
    ("qa", [], (False, 0.8)),
])
def test_the_flags_reach_the_job_options(command, extra, want, monkeypatch, tmp_path):
    from lwmkit.pipelines.engine import dataflow

    seen = []
    monkeypatch.setattr(dataflow, "dry_run_instead", lambda options: seen.append(options) or True)
    for name in ("x.jsonl", "t.model"):  # the command refuses missing local files before building options
        (tmp_path / name).touch()
    argv = [command, "--input", str(tmp_path / "x.jsonl"), "--tokenizer", str(tmp_path / "t.model"), "--output",
            str(tmp_path / "o"), *extra]
    assert main(argv) in (0, None)
    (options,) = seen
    assert (options.near_dedup, options.near_threshold) == want
