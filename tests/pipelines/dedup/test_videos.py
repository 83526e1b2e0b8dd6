"""Videos: a re-encoded clip (another codec, size, bitrate), a re-upload that starts later and a copy
with a black intro are removed; other clips, and other parts of one long clip, are kept (default
thresholds, the real Beam stages and real PyAV encoding/decoding)."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from lwmkit.pipelines.dedup import VideoHashConfig, VideoMatcher, clip_similarity, video_sketch
from lwmkit.pipelines.dedup.videos import sample_hashes
from PIL import Image

from tests.pipelines.dedup.runs import run_sketches
from tests.pipelines.dedup.test_images import drawn_scene
from tests.pipelines.helpers import SHARED_DATA

TREE = SHARED_DATA / "video" / "tree.avi"


def scene_frames(seed: int, seconds: float, fps: int = 10, size=(192, 144)) -> list[np.ndarray]:
    """A camera panning over a drawn scene: each second a new part of the scene comes into view."""
    wide = Image.new("RGB", (size[0] * 4, size[1]))
    for i in range(4):
        wide.paste(drawn_scene(seed * 10 + i, size), (size[0] * i, 0))
    n = int(seconds * fps)
    return [np.asarray(wide.crop((x, 0, x + size[0], size[1])).convert("RGB"))
            for x in np.linspace(0, size[0] * 3, n).astype(int)]


def encode(path: Path, frames, fps: int, codec: str = "mpeg4", size=None, bitrate: int = 800_000,
           black_s: float = 0.0) -> Path:
    """Writes frames (uint8 [h, w, 3]) with PyAV; `size` rescales, `black_s` prepends a black intro."""
    h, w = frames[0].shape[:2]
    w, h = size or (w, h)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = bitrate
        stream.time_base = Fraction(1, fps)
        black = [np.zeros((h, w, 3), np.uint8)] * int(black_s * fps)
        for i, f in enumerate(black + list(frames)):
            image = Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR) if f.shape[:2] != (h, w) else f
            frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_clip_rule_finds_an_offset_and_ignores_flat_frames():
    cfg = VideoHashConfig()
    frames = [Image.fromarray(f) for f in scene_frames(3, 4.0, fps=2)]  # one frame per grid step
    black = Image.new("RGB", frames[0].size)
    a = sample_hashes([(i * 0.5, f) for i, f in enumerate(frames)], cfg)
    late = sample_hashes([(i * 0.5, f) for i, f in enumerate([black, black] + frames[3:])], cfg)
    assert a.step_ms == 500 and len(a.values) == len(frames) and a.mask.all()
    assert late.mask.tolist()[:2] == [False, False]  # black frames are unusable
    assert clip_similarity(a, late, cfg.max_distance) == 1.0  # found at an offset of 1 step
    other = sample_hashes([(i * 0.5, Image.fromarray(f)) for i, f in enumerate(scene_frames(4, 4.0, fps=2))], cfg)
    assert clip_similarity(a, other, cfg.max_distance) < 0.5


def test_many_frames_thin_to_max_frames():
    cfg = VideoHashConfig(max_frames=8)
    frames = [Image.fromarray(f) for f in scene_frames(5, 8.0, fps=2)]  # 16 grid steps
    s = sample_hashes([(i * 0.5, f) for i, f in enumerate(frames)], cfg)
    assert s.step_ms == 1000 and len(s.values) <= 8


@pytest.mark.slow
def test_generated_clips_copies_removed_others_kept(tmp_path):
    cfg = VideoHashConfig()
    paths, truth = {}, set()
    for seed in (11, 12, 13):
        frames = scene_frames(seed, 6.0)
        key = f"clip-{seed}"
        paths[key] = encode(tmp_path / f"{key}.mp4", frames, 10, "mpeg4", bitrate=2_000_000)
        copies = {
            f"{key}~h264-small": encode(tmp_path / f"{key}-h264.mp4", frames, 10, "libx264", size=(128, 96),
                                        bitrate=150_000),
            f"{key}~late-start": encode(tmp_path / f"{key}-late.mp4", frames[15:], 10, "mpeg4"),
            f"{key}~black-intro": encode(tmp_path / f"{key}-black.webm", frames, 10, "libvpx", black_s=1.0),
        }
        for copy, path in copies.items():
            paths[copy] = path
            truth.add((copy, key))
    # Not copies: the first and second half of one long pan (one scene, other pictures).
    long = scene_frames(21, 12.0)
    paths["pan-first"] = encode(tmp_path / "pan-first.mp4", long[:60], 10)
    paths["pan-second"] = encode(tmp_path / "pan-second.mp4", long[60:], 10)
    sketches = [video_sketch(k, str(p), cfg) for k, p in sorted(paths.items())]
    rows = run_sketches(sketches, VideoMatcher(cfg), tmp_path / "d.jsonl")
    # One cluster per original; its survivor is the longest clip, then the smallest key (the black
    # intro makes that copy the longest).
    size = {s.key: s.size for s in sketches}
    expected = set()
    for original in ("clip-11", "clip-12", "clip-13"):
        members = [original] + [c for c, o in truth if o == original]
        kept = min(members, key=lambda k: (-size[k], k))
        expected |= {(m, kept) for m in members if m != kept}
    assert {(r["key"], r["kept"]) for r in rows} == expected
    assert all(r["similarity"] >= 0.8 and r["cluster_size"] == 4 for r in rows)


def test_undecodable_file_names_the_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a real video")
    with pytest.raises(ValueError, match="video 'bad' cannot be hashed"):
        video_sketch("bad", str(bad))


@pytest.mark.realdata
def test_sample_clip_reencoded_is_removed(tmp_path):
    if not TREE.is_file():
        pytest.skip(f"sample video not found at {TREE} (the shared data folder beside the checkout)")
    frames = decoded(TREE)
    cfg = VideoHashConfig()
    paths = {
        "tree": TREE,
        "tree~h264": encode(tmp_path / "tree-h264.mp4", frames, 15, "libx264", size=(240, 180), bitrate=200_000),
        "tree~vp8-half": encode(tmp_path / "tree-vp8.webm", frames, 15, "libvpx", size=(160, 120)),
        "other": encode(tmp_path / "other.mp4", scene_frames(7, 4.0, fps=15, size=(320, 240)), 15),
    }
    sketches = [video_sketch(k, str(p), cfg) for k, p in sorted(paths.items())]
    rows = run_sketches(sketches, VideoMatcher(cfg), tmp_path / "d.jsonl")
    assert {(r["key"], r["kept"]) for r in rows} == {("tree~h264", "tree"), ("tree~vp8-half", "tree")}
