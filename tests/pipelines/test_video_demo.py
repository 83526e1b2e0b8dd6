"""The video part of `lwm-pack demo`: generated clips through the video job, and one batch read back."""

from __future__ import annotations

import io
import json

from lwmkit.packing import verify_directory
from lwmkit.pipelines.tools.demo import DEMO_VIDEO_SEQ_LEN, run_demo
from lwmkit.pipelines.tools.sample_videos import write_sample_videos
from lwmkit.pipelines.videos.index import probe


def test_sample_videos(tmp_path):
    listing = write_sample_videos(str(tmp_path), clips=3, frames=6)
    rows = [json.loads(x) for x in open(listing, encoding="utf-8")]
    assert [r["path"] for r in rows] == ["clip-0.mp4", "clip-1.webm", "clip-2.mp4", "clip-0.mp4", "sound.m4a"]
    for name in ("clip-0.mp4", "clip-1.webm", "clip-2.mp4"):
        index = probe(str(tmp_path / name))
        assert len(index.pts) == 6 and (index.width, index.height) == (64, 48)
    assert "conversations" in rows[3]


def test_demo_video_part(tmp_path, bpe_model):
    buf = io.StringIO()
    out = tmp_path / "demo"
    run_demo(str(out), tokenizer=bpe_model, books=2, out=buf, progress=False, videos=2)
    text = buf.getvalue()
    assert "sample videos:" in text and "(2 clips, a chat row, an audio-only file)" in text
    assert "video job: 3 examples from 9 frames" in text and "failures: decode:no_video_stream x1" in text
    assert f"batch of 1 x {DEMO_VIDEO_SEQ_LEN} tokens" in text
    shards = out / "video-shards"
    for d in ("documents", f"packed-{DEMO_VIDEO_SEQ_LEN}"):
        assert verify_directory(str(shards / d)) == []
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["vqgan"]["preset"] == "tiny" and manifest["stages"]["frames"]["kept"] == 9
    quiet = io.StringIO()
    run_demo(str(tmp_path / "no-video"), tokenizer=bpe_model, books=2, out=quiet, progress=False, videos=0)
    assert "sample videos" not in quiet.getvalue() and not (tmp_path / "no-video" / "video-shards").exists()
