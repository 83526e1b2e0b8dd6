"""The video-QA job end to end: clips at known cuts, captions and QA from a local server, LWM examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lwmkit.pipelines.qa.client import ClientOptions
from lwmkit.pipelines.tools import sample_videos
from lwmkit.pipelines.video_qa.clips import ClipOptions, find_clips, split_scenes
from lwmkit.pipelines.video_qa.job import VideoQAOptions, run_video_qa
from lwmkit.pipelines.video_qa.models import ChatCaptionerOptions, ChatQAOptions, OfflineOptions

from tests.pipelines.vqa_server import VideoQAServer

FPS = 10
CUTS = (25, 70, 140)  # frame numbers where a new shot starts


def write_cut_video(path: Path, n: int = 200, cuts=CUTS) -> str:
    return sample_videos.write_cut_video(str(path), frames=n, cuts=cuts, fps=FPS, seed=len(str(path)))


def test_detected_cuts_within_one_frame(tmp_path):
    found = find_clips(write_cut_video(tmp_path / "cuts.mp4"), ClipOptions(min_clip_s=1.0, max_clip_s=5.0))
    assert len(found["cuts"]) == len(CUTS)
    for got, want in zip(found["cuts"], CUTS, strict=True):
        assert abs(got * FPS - want) <= 1
    starts = [c["start"] for c in found["clips"]]
    assert starts[:3] == [0.0, 2.5, 7.0]
    assert all(c["end"] - c["start"] <= 5.0 + 1e-6 for c in found["clips"])  # the 7-14 s shot is cut in two
    assert found["clips"][-1]["end"] == pytest.approx(20.0)
    assert all(1 <= len(c["thumbs"]) <= 2 for c in found["clips"])


def test_split_scenes_stride_and_long_scenes():
    o = ClipOptions(min_clip_s=2, max_clip_s=5)
    assert split_scenes([2.5, 7.0], 20.0, o) == [(0.0, 2.5), (2.5, 7.0), (7.0, 11.333), (11.333, 15.667), (15.667, 20.0)]
    s = ClipOptions(method="stride", stride_s=4, min_clip_s=2)
    assert split_scenes([], 9.0, s) == [(0.0, 4.0), (4.0, 9.0)]  # a 1 s tail joins the piece before


def test_real_video_is_clipped(tmp_path):
    found = find_clips("../shared/data/video/tree.avi", ClipOptions())
    assert found["clips"] and found["clips"][0]["start"] == 0.0
    assert all(2.0 - 1e-6 <= c["end"] - c["start"] <= 10.0 + 1e-6 for c in found["clips"][:-1])


def _options(tmp_path, videos, bpe_model, output, server=None, **kw):
    if server is None:
        cap, qa = OfflineOptions(), OfflineOptions()
    else:
        client = ClientOptions(base_url=server.url, model="test-vlm", retries=2, backoff_s=0.01, concurrency=4)
        cap, qa = ChatCaptionerOptions(client), ChatQAOptions(client)
    return VideoQAOptions(
        inputs=(str(videos / "*.mp4"),), output=str(output), tokenizer=bpe_model, seq_lens=(4096,),
        clips=ClipOptions(min_clip_s=1.0, max_clip_s=5.0), captioner=cap, questions=qa, max_frames=6,
        cache_dir=str(tmp_path / "cache"), vqgan_preset="tiny", batch_size=8, direct_running_mode="in_memory", **kw)


def _shards(output: Path) -> dict[str, bytes]:
    return {str(p.relative_to(output)): p.read_bytes() for p in sorted(output.rglob("*.array_record-*")) if ".work" not in p.parts}


def test_job_with_server_retries_failures_and_cache(tmp_path, bpe_model):
    videos = tmp_path / "videos"
    videos.mkdir()
    for k in range(3):
        write_cut_video(videos / f"v{k}.mp4", n=120 + 20 * k, cuts=(25 + k, 70))
    (videos / "broken.mp4").write_bytes(b"not a video")
    with VideoQAServer() as server:
        manifest = run_video_qa(_options(tmp_path, videos, bpe_model, tmp_path / "out", server))
        first = server.requests
        assert first > 0
        assert all(e["images"] == 2 for e in server.log if e["kind"] == "caption")
        assert manifest["captioner"]["kind"] == "openai_chat"
        totals = manifest["video_qa"]["totals"]
        assert totals["videos"] == 3 and totals["questions"] == 6  # clip 999 left out in every video
        assert totals["caption.calls"] >= totals["captioned"]
        assert totals["qa.usage.total_tokens"] == 3 * 60
        assert sum(manifest["video_qa"]["evidence_depth"].values()) == 6
        rows = [json.loads(x) for x in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
        assert any(r["reason"] == "corrupt_video" and r["file"].endswith("broken.mp4") for r in rows)
        empty = [r for r in rows if r["reason"] == "empty_caption"]
        for r in empty:
            assert json.loads(r["detail"])["attempts"] == 3 and len(json.loads(r["detail"])["raw"]) == 3
        shards = _shards(tmp_path / "out")
        assert shards
        # A rerun into a new output with the same cache pays for nothing and writes the same bytes.
        run_video_qa(_options(tmp_path, videos, bpe_model, tmp_path / "again", server))
        assert server.requests == first
        assert _shards(tmp_path / "again") == shards


def test_offline_job_examples(tmp_path, bpe_model):
    """Frames over the whole video, one atomic span per frame and per turn, loss on answers only."""
    import pyarrow.parquet as pq
    from lwmkit.packing import ShardDataSource
    from lwmkit.tokenizers.text import SentencePieceTokenizer

    videos = tmp_path / "videos"
    videos.mkdir()
    write_cut_video(videos / "a.mp4")
    out = tmp_path / "out"
    manifest = run_video_qa(_options(tmp_path, videos, bpe_model, out))
    assert manifest["captioner"]["kind"] == "offline" and manifest["qa_generator"]["kind"] == "offline"
    assert manifest["options"]["captioner"]["kind"] == "offline"
    assert manifest["video_qa"]["totals"]["questions"] == 4 and manifest["video_qa"]["totals"]["caption.calls"] == 0
    (row,) = pq.read_table(out / "documents" / "documents.parquet").to_pylist()
    meta = json.loads(row["meta"])
    rec = ShardDataSource(str(out / "documents"))[row["index"]]
    assert meta["kind"] == "chat" and meta["frames"] == 6 and meta["turns"] == 4
    assert meta["frame_indices"][0] == 0 and meta["frame_indices"][-1] == 199  # the whole video
    assert [c[1] for c in meta["timeline"]][:3] == [0.0, 2.5, 7.0]
    assert all(e["clips"] for e in meta["evidence"])
    tokens, vision, loss = rec["tokens"], rec["vision_mask"].astype(bool), rec["loss_weights"]
    assert vision.sum() == 6 * 257 and not loss[vision].any()
    tok = SentencePieceTokenizer.from_file(bpe_model)
    answers = [c[3] for c in meta["timeline"]]
    learned = tok.decode([int(t) for t, w in zip(tokens, loss, strict=True) if w > 0 and t != tok.eos_id])
    assert any(a in learned for a in answers)
    assert "What happens" not in learned  # questions carry no loss
    assert len(rec["atomic_spans"]) == 2 * (6 + 4)  # flat (start, end) pairs: one span per frame and per turn


def test_cli_stride_against_server(tmp_path, bpe_model, capsys):
    from lwmkit.pipelines.cli import main

    videos = tmp_path / "videos"
    videos.mkdir()
    write_cut_video(videos / "a.mp4", n=120)
    with VideoQAServer() as server:
        argv = ["video-qa", "--input", str(videos / "*.mp4"), "--tokenizer", bpe_model, "--output", str(tmp_path / "o"),
                "--seq-len", "4096", "--max-frames", "3", "--vqgan-preset", "tiny", "--clips", "stride", "--stride", "4",
                "--min-clip", "1", "--base-url", server.url, "--model", "vlm", "--questions", "2", "--retries", "2",
                "--quiet"]
        assert main(argv) == 0
        captions = [e for e in server.log if e["kind"] == "caption"]
        assert len(captions) >= 3 and all(e["images"] == 2 for e in captions)  # 12 s in pieces of 4 s
    out = capsys.readouterr().out
    assert "1 video chat examples from 1 videos, 3 clips" in out
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["options"]["clips"]["method"] == "stride" and manifest["captioner"]["client"]["model"] == "vlm"
    assert main(["video-qa", "--input", str(videos / "*.mp4"), "--tokenizer", bpe_model, "--output",
                 str(tmp_path / "o2"), "--base-url", server.url]) == 1  # --model missing: a clear error
    assert "--model" in capsys.readouterr().err
