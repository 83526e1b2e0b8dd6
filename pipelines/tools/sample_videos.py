"""A built-in sample for the video part of `lwm-pack demo`: a few short clips made with PyAV, and their list.

Clips show colour bars sliding by a few pixels per frame, so consecutive frames differ; they are
tiny (64x48, a second or two) so the demo stays fast. The list (`videos.jsonl`) holds a caption for
each clip, chat turns for one of them, and one audio-only file, which the job drops with its reason
(`no_video_stream`) to show the failures output.

Example:
    >>> write_sample_videos("/tmp/demo/videos", clips=2)
    '/tmp/demo/videos/videos.jsonl'   # rows {"path": "clip-0.mp4", "caption": ...}, ..., {"path": "sound.m4a", ...}
"""

from __future__ import annotations

import json
import os

import numpy as np

_CAPTIONS = (
    "Colour bars slide slowly to the right across a small screen.",
    "A test pattern drifts sideways, one bar after another.",
    "Bright vertical stripes move past the camera.",
)
_CHAT = [
    {"from": "human", "value": "<video>\nWhat moves in this video?"},
    {"from": "gpt", "value": "A row of coloured vertical bars slides to the right."},
]


def _bars(i: int, w: int, h: int, seed: int) -> np.ndarray:
    x = (np.arange(w) + 3 * i + 17 * seed) % w
    palette = np.array([[230, 40, 40], [40, 200, 60], [40, 80, 230], [240, 220, 40], [250, 250, 250]], np.uint8)
    row = palette[(x * len(palette)) // w]  # [w, 3]
    return np.repeat(row[None], h, axis=0)  # [h, w, 3]


def _write_clip(path: str, seed: int, frames: int, codec: str) -> None:
    import av

    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=8)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(_bars(i, 64, 48, seed), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_silence(c, stream, rate: int, frames: int, samples: int = 1024) -> None:
    """Encodes `frames` frames of `samples` silent mono samples at `rate` Hz into the audio `stream`
    of the open PyAV container `c`, then flushes the stream."""
    import av

    for k in range(frames):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, k * samples
        for p in stream.encode(frame):
            c.mux(p)
    for p in stream.encode():
        c.mux(p)


def _write_audio_only(path: str) -> None:
    import av

    with av.open(path, "w", format="mp4") as c:
        write_silence(c, c.add_stream("aac", rate=8000), 8000, 4)


def write_sample_videos(folder: str, clips: int = 3, frames: int = 12) -> str:
    """Writes `clips` clips (H.264 MP4 and VP9 WebM in turn), an audio-only file and `videos.jsonl`.

    Returns:
      The path of `videos.jsonl`.
    """
    if not 1 <= clips <= len(_CAPTIONS):
        raise ValueError(f"clips: {clips} is outside 1..{len(_CAPTIONS)}")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for k in range(clips):
        name = f"clip-{k}.mp4" if k % 2 == 0 else f"clip-{k}.webm"
        _write_clip(os.path.join(folder, name), k, frames, "libx264" if k % 2 == 0 else "libvpx-vp9")
        rows.append({"path": name, "caption": _CAPTIONS[k]})
    rows.append({"path": "clip-0.mp4", "conversations": _CHAT})
    _write_audio_only(os.path.join(folder, "sound.m4a"))
    rows.append({"path": "sound.m4a", "caption": "Only a soundtrack, no picture."})
    listing = os.path.join(folder, "videos.jsonl")
    with open(listing, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return listing


def write_cut_video(path: str, frames: int = 200, cuts: tuple[int, ...] = (25, 70, 140), fps: int = 10,
                    w: int = 96, h: int = 64, seed: int = 0) -> str:
    """An H.264 video of shots with known cuts: random 8x8-pixel blocks panning 1 px a frame, a new
    pattern from each frame number in `cuts` (video-QA demo, tests and benchmark)."""
    import av

    rng = np.random.default_rng(seed)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "18"}
        shot = set(cuts)
        base = None
        for i in range(frames):
            if i == 0 or i in shot:
                base = rng.integers(0, 255, (h // 8, w // 8, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
            for p in s.encode(av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")):  # [h, w, 3]
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path
