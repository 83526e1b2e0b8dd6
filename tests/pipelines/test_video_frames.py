"""Frame sampling (count and fps, clips, caps, VFR), and decoding generated clips of awkward kinds.

Clips are made with PyAV (video_inputs.py); each frame carries its index in its pixels, so every
check reads back which source frame a decoded, preprocessed 256x256 frame came from.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from lwmkit.pipelines.videos.frames import DecodeOptions, decode_video
from lwmkit.pipelines.videos.index import FrameSampling, VideoError, probe, sample_frames

from .helpers import SHARED_DATA
from .video_inputs import (
    corner_frame,
    read_index,
    truncate,
    write_audio_only,
    write_clip,
    write_vfr_clip,
    write_zero_frame_clip,
)

TREE = SHARED_DATA / "video" / "tree.avi"
VFR_MS = [0, 40, 80, 300, 310, 320, 900, 1000, 1500, 1510]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    c = {
        "h264": write_clip(d / "a.mp4", n=30, fps=10),
        "vp9": write_clip(d / "b.webm", n=30, fps=10, codec="libvpx-vp9"),
        "odd": write_clip(d / "odd.webm", n=6, w=65, h=37, codec="libvpx-vp9"),
        "tall": write_clip(d / "tall.mp4", n=6, w=48, h=128),
        "wide": write_clip(d / "wide.mp4", n=6, w=320, h=64),
        "audio_video": write_clip(d / "av.mp4", n=20, audio=True),
        "vfr": write_vfr_clip(d / "vfr.mp4", VFR_MS),
        "rotated": write_clip(d / "rot.mp4", n=4, rotation=90, pattern=corner_frame),
        "audio_only": write_audio_only(d / "sound.m4a"),
        "zero_frames": write_zero_frame_clip(d / "empty.webm"),
        "tiny": write_clip(d / "tiny.mp4", n=3, w=16, h=12),
        "garbage": str(d / "garbage.mp4"),
    }
    (d / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 500)
    c["truncated_webm"] = truncate(write_clip(d / "long.webm", n=60, codec="libvpx-vp9"), d / "cut.webm", 0.5)
    c["truncated_faststart"] = truncate(write_clip(d / "fs.mp4", n=60, faststart=True), d / "cut-fs.mp4", 0.6)
    c["truncated_no_moov"] = truncate(c["h264"], d / "cut.mp4", 0.7)
    return c


def _decode(path: str, sampling: FrameSampling, clip=(None, None), **kw) -> tuple[dict, np.ndarray]:
    job = {"path": str(path), "clip": list(clip), "options": DecodeOptions(sampling, **kw).to_json()}
    events = list(decode_video(job))
    assert events[0][0] == "meta" and all(e[0] == "frames" for e in events[1:])
    starts = [e[1] for e in events[1:]]
    frames = np.concatenate([e[2] for e in events[1:]])  # [k, 256, 256, 3]
    assert starts == list(range(0, len(frames), kw.get("chunk_frames", 16)))
    return events[0][1], frames


# --- sampling ------------------------------------------------------------------------------------------


def test_count_sampling_is_lwms_linspace():
    times = np.arange(30) / 10
    assert sample_frames(times, FrameSampling("count", num_frames=4)).tolist() == [0, 9, 19, 29]
    assert sample_frames(times, FrameSampling("count", num_frames=64)).tolist() == list(range(30))
    expected = np.linspace(0, 29, 7, dtype=int).tolist()  # lwm/vision_chat.py
    assert sample_frames(times, FrameSampling("count", num_frames=7)).tolist() == expected


def test_fps_sampling_clips_and_cap():
    times = np.arange(100) / 25  # 4 s at 25 fps
    assert sample_frames(times, FrameSampling("fps", fps=2.0), end=4.0).tolist() == [0, 12, 25, 37, 50, 62, 75, 87]
    clip = sample_frames(times, FrameSampling("fps", fps=1.0), clip=(1.5, 3.5), end=4.0)
    assert clip.tolist() == [38, 62]  # 1.5 s: the first frame starting in the clip; 2.5 s: the one showing
    assert sample_frames(times, FrameSampling("count", num_frames=50, max_frames=3)).tolist() == [0, 49, 99]
    capped = sample_frames(times, FrameSampling("fps", fps=25.0, max_frames=5), end=4.0)
    assert capped.tolist() == np.linspace(0, 99, 5, dtype=int).tolist()
    in_clip = sample_frames(times, FrameSampling("count", num_frames=3), clip=(2.0, None), end=4.0)
    assert in_clip.tolist() == [50, 74, 99]
    with pytest.raises(VideoError, match="no frame starts") as e:
        sample_frames(times, FrameSampling(), clip=(5.0, 6.0), end=4.0)
    assert e.value.reason == "empty_clip"


def test_fps_sampling_follows_real_timestamps():
    times = np.array(VFR_MS) / 1000
    got = sample_frames(times, FrameSampling("fps", fps=4.0), end=1.55)
    targets = [k / 4 for k in range(math.ceil(1.55 * 4))]
    expected = sorted({max(i for i, t in enumerate(times) if t <= target + 1e-9) for target in targets})
    assert got.tolist() == expected == [0, 2, 5, 7, 8]


@pytest.mark.parametrize(
    "kw,field",
    [({"mode": "random"}, "mode"), ({"num_frames": 0}, "num_frames"), ({"fps": 0.0}, "fps"),
     ({"max_frames": 0}, "max_frames")],
)
def test_sampling_is_validated(kw, field):
    with pytest.raises(ValueError, match=field):
        FrameSampling(**kw)


@pytest.mark.parametrize(
    "kw,field",
    [({"decoders": ("ffmpeg",)}, "decoders"), ({"decoders": ()}, "decoders"), ({"min_side": 0}, "min_side"),
     ({"chunk_frames": 0}, "chunk_frames"), ({"time_budget_s": 0}, "time_budget_s"), ({"workers": 0}, "workers")],
)
def test_decode_options_are_validated(kw, field):
    with pytest.raises(ValueError, match=field):
        DecodeOptions(**kw)


# --- decoding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["h264", "vp9"])
@pytest.mark.parametrize("decoders", [("decord", "pyav"), ("pyav",)])
def test_decoded_frames_are_the_sampled_ones(clips, kind, decoders):
    meta, frames = _decode(clips[kind], FrameSampling("count", num_frames=7), decoders=decoders, chunk_frames=3)
    assert meta["decoder"] == decoders[0] and meta["source_frames"] == 30
    assert meta["frame_indices"] == np.linspace(0, 29, 7, dtype=int).tolist()
    assert meta["frame_times"] == [round(i / 10, 3) for i in meta["frame_indices"]]
    assert frames.shape == (7, 256, 256, 3) and frames.dtype == np.uint8
    assert [read_index(f) for f in frames] == meta["frame_indices"]


def test_long_videos_decode_with_pyav_first(clips):
    """decord's read-ahead makes a worker's memory grow with the video's length; PyAV's stays flat."""
    sampling = FrameSampling("count", num_frames=4)
    short, _ = _decode(clips["h264"], sampling, pyav_from_s=60.0)  # a 3-second clip
    assert short["decoder"] == "decord"
    long, frames = _decode(clips["h264"], sampling, pyav_from_s=2.0)
    assert long["decoder"] == "pyav" and long["frame_indices"] == short["frame_indices"] and len(frames) == 4
    clipped, _ = _decode(clips["h264"], sampling, clip=(0.0, 1.5), pyav_from_s=2.0)  # the clip is what counts
    assert clipped["decoder"] == "decord"
    only, _ = _decode(clips["h264"], sampling, decoders=("decord",), pyav_from_s=0.0)  # never added
    assert only["decoder"] == "decord"


def test_decord_and_pyav_agree(clips):
    _, a = _decode(clips["h264"], FrameSampling("fps", fps=3.0), decoders=("decord",))
    _, b = _decode(clips["h264"], FrameSampling("fps", fps=3.0), decoders=("pyav",))
    assert a.shape == b.shape and np.abs(a.astype(int) - b).mean() < 1.0


def test_decord_is_sent_back_after_every_batch(monkeypatch):
    """decord's decoding thread reads ahead into memory while the worker waits on the pipe (a
    worker grew 120 -> 307 MiB from 10- to 60-minute videos): each batch is followed by seek(0)."""
    import sys
    import types

    from lwmkit.pipelines.videos import frames

    calls = []

    class Reader:
        def __init__(self, path, ctx=None, num_threads=0):
            calls.append(("open", path))

        def __len__(self):
            return 100

        def get_batch(self, indices):
            calls.append(("get_batch", list(indices)))
            return types.SimpleNamespace(asnumpy=lambda: np.zeros((len(indices), 2, 2, 3), np.uint8))

        def seek(self, i):
            calls.append(("seek", i))

    monkeypatch.setitem(sys.modules, "decord", types.SimpleNamespace(VideoReader=Reader, cpu=lambda i: i))
    index = types.SimpleNamespace(pts=np.arange(100))
    chunks = []
    for start, batch in frames._decord_chunks("v.mp4", index, np.arange(0, 100, 10), 4, 1):
        chunks.append((start, len(batch)))
        assert calls[-1] == ("seek", 0)  # before the caller holds the batch
    assert chunks == [(0, 4), (4, 4), (8, 2)]
    assert [c[0] for c in calls] == ["open"] + ["get_batch", "seek"] * 3
    assert calls[1][1] == [0, 10, 20, 30] and calls[5][1] == [80, 90]


@pytest.mark.parametrize("kind", ["odd", "tall", "wide", "audio_video"])
def test_odd_sizes_and_an_audio_track(clips, kind):
    meta, frames = _decode(clips[kind], FrameSampling("count", num_frames=3))
    assert frames.shape == (3, 256, 256, 3)
    assert [read_index(f) for f in frames] == meta["frame_indices"]


def test_variable_frame_rate_by_fps(clips):
    meta, frames = _decode(clips["vfr"], FrameSampling("fps", fps=4.0))
    assert meta["frame_indices"] == [0, 2, 5, 7, 8]
    assert meta["frame_times"] == [VFR_MS[i] / 1000 for i in meta["frame_indices"]]
    assert [read_index(f) for f in frames] == [0, 2, 5, 7, 8]


def test_rotated_video_is_turned_upright(clips):
    meta, frames = _decode(clips["rotated"], FrameSampling("count", num_frames=1))
    assert meta["rotation"] == 90 and meta["decoder"] == "pyav"  # decord ignores the display matrix
    f = frames[0].astype(float).mean(axis=-1)
    quadrants = {"tl": f[:128, :128], "tr": f[:128, 128:], "bl": f[128:, :128], "br": f[128:, 128:]}
    bright = {k: v.mean() for k, v in quadrants.items()}
    # The encoded white top-left corner, turned 90 degrees counter-clockwise, ends bottom-left.
    assert bright["bl"] > 200 and max(bright["tl"], bright["tr"], bright["br"]) < 60


def test_clip_range_selects_frames(clips):
    meta, frames = _decode(clips["h264"], FrameSampling("count", num_frames=4), clip=(1.0, 2.0))
    assert meta["frame_indices"] == [10, 13, 16, 19]
    assert [read_index(f) for f in frames] == [10, 13, 16, 19]


@pytest.mark.parametrize(
    "kind,reason",
    [
        ("audio_only", "no_video_stream"),
        ("zero_frames", "zero_frames"),
        ("truncated_webm", "truncated_video"),
        ("truncated_faststart", "truncated_video"),
        ("truncated_no_moov", "broken_container"),
        ("garbage", "broken_container"),
    ],
)
def test_bad_files_fail_with_their_reason(clips, kind, reason):
    with pytest.raises(VideoError) as e:
        _decode(clips[kind], FrameSampling())
    assert e.value.reason == reason and e.value.detail


def test_missing_small_and_huge(clips, tmp_path):
    with pytest.raises(VideoError) as e:
        probe(str(tmp_path / "nothing.mp4"))
    assert e.value.reason == "missing_file"
    with pytest.raises(VideoError, match="short side") as e:
        probe(clips["tiny"], min_side=16)
    assert e.value.reason == "too_small"
    with pytest.raises(VideoError, match="max_pixels") as e:
        probe(clips["wide"], max_pixels=10_000)
    assert e.value.reason == "too_many_pixels"


@pytest.mark.realdata
def test_tree_avi(tmp_path):
    if not TREE.exists():
        pytest.skip(f"{TREE} is absent (../shared/data is not checked out)")
    index = probe(str(TREE))
    assert len(index.pts) == 68 and index.codec == "cinepak" and (index.width, index.height) == (320, 240)
    assert 29.0 < index.end < 30.0  # 68 frames over 29.6 s: the header's 15 fps is not the content's rate
    meta, frames = _decode(str(TREE), FrameSampling("count", num_frames=8))
    assert meta["frame_indices"] == np.linspace(0, 67, 8, dtype=int).tolist() and frames.shape == (8, 256, 256, 3)
    by_rate, _ = _decode(str(TREE), FrameSampling("fps", fps=1.0), decoders=("pyav",))
    assert by_rate["frame_indices"] == sample_frames(index.times, FrameSampling("fps", fps=1.0), end=index.end).tolist()
    assert 20 <= by_rate["frames"] <= 30
    _, again = _decode(str(TREE), FrameSampling("count", num_frames=8), decoders=("pyav",))
    assert np.abs(again.astype(int) - frames).mean() < 1.0
