"""Cutting one video into short clips: shot boundaries (PySceneDetect's content detector) or a fixed stride.

One decoding pass (PyAV, through PySceneDetect's `VideoStreamAv`) does both jobs: the content
detector finds the cuts, and a tap beside it keeps one small JPEG thumbnail every `thumb_every_s`
seconds for the captioner. Nothing else of a frame is kept, so memory grows only by the thumbnails
(about 4-8 KB each at `thumb_side` 192).

Clips from the cuts:
    scenes shorter than `min_clip_s` are left to the detector (`min_scene_len`); a short last scene
    joins the one before it;
    scenes longer than `max_clip_s` are cut into ceil(length / max_clip_s) equal pieces;
    `method="stride"` skips detection: pieces of `stride_s` (the last one, if shorter than
    `min_clip_s`, joins the one before it).
Clip ids are `<video key>-<index:05d>`, in time order: the same video and options give the same ids.

Example, a 20 s video with cuts at 2.5 s and 7.0 s, min 2 s, max 5 s:
    scenes [0, 2.5) [2.5, 7.0) [7.0, 20.0)
    clips  [0, 2.5) [2.5, 7.0) [7.0, 11.33) [11.33, 15.67) [15.67, 20.0)
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from lwmkit.pipelines.engine.job_options import check_choices, check_ranges

METHODS = ("scenes", "stride")


@dataclass(frozen=True)
class ClipOptions:
    """How videos are cut into clips, and the frames each clip shows the captioner.

    Attributes:
      method: "scenes" (PySceneDetect content detector) or "stride" (fixed pieces).
      threshold: the content detector's threshold (PySceneDetect's default 27; higher finds fewer cuts).
      min_clip_s, max_clip_s: clip length bounds in seconds (NeMo Curator's 2-10 s by default).
      stride_s: piece length of the stride method.
      caption_frames: thumbnails per clip sent to the captioner.
      thumb_every_s: seconds between kept thumbnails.
      thumb_side: longer side of a thumbnail in pixels.
    """

    method: str = "scenes"
    threshold: float = 27.0
    min_clip_s: float = 2.0
    max_clip_s: float = 10.0
    stride_s: float = 10.0
    caption_frames: int = 2
    thumb_every_s: float = 1.0
    thumb_side: int = 192

    def __post_init__(self):
        check_choices(self, method=METHODS)
        check_ranges(self, threshold="(0, 255]")
        if not 0 < self.min_clip_s <= self.max_clip_s <= 3600:
            raise ValueError(f"min_clip_s/max_clip_s: {self.min_clip_s}/{self.max_clip_s} need 0 < min <= max <= 3600")
        check_ranges(
            self, stride_s="(0, 3600]", caption_frames="1..16", thumb_every_s="[0.04, 60]", thumb_side="32..1024"
        )


def split_scenes(cuts: list[float], end: float, options: ClipOptions) -> list[tuple[float, float]]:
    """Clip (start, end) seconds from cut times; see the module docstring."""
    if options.method == "stride":
        bounds = [0.0, *np.arange(options.stride_s, end, options.stride_s).tolist(), end]
    else:
        bounds = [0.0, *sorted(c for c in cuts if 0.0 < c < end), end]
    scenes = [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    if len(scenes) > 1 and scenes[-1][1] - scenes[-1][0] < options.min_clip_s:
        scenes[-2:] = [(scenes[-2][0], scenes[-1][1])]
    limit = options.max_clip_s if options.method == "scenes" else math.inf
    clips = []
    for a, b in scenes:
        n = max(1, math.ceil((b - a) / limit - 1e-9))
        clips += [(a + (b - a) * k / n, a + (b - a) * (k + 1) / n) for k in range(n)]
    return [(round(a, 3), round(b, 3)) for a, b in clips]


def _thumbnail(frame_bgr: np.ndarray, side: int) -> bytes:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(frame_bgr[:, :, ::-1]))
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80, optimize=False)
    return buf.getvalue()


def _tap_detector(options: ClipOptions, thumbs: list[tuple[float, bytes]], last: list[float]):
    from scenedetect import SceneDetector

    class Tap(SceneDetector):
        """A detector that finds no cut: it keeps one thumbnail every `thumb_every_s` seconds."""

        def __init__(self):
            super().__init__()
            self.next_t = 0.0

        def process_frame(self, timecode, frame_img):
            t = timecode.seconds
            last[0] = t
            if t + 1e-6 >= self.next_t:
                thumbs.append((t, _thumbnail(frame_img, options.thumb_side)))
                self.next_t = t + options.thumb_every_s
            return []

    return Tap()


def find_clips(path: str, options: ClipOptions) -> dict[str, Any]:
    """Cuts, clips and thumbnails of one local video file, in one decoding pass.

    Returns:
      {"duration": seconds, "fps": frame rate, "cuts": [seconds], "clips": [{"start", "end",
      "thumbs": [base64 JPEG, ...]}]}; thumbnails are the kept ones inside the clip, `caption_frames`
      of them spread evenly (the nearest one when none falls inside).

    Raises:
      ValueError: the file cannot be decoded (no video stream, no frame).
    """
    from scenedetect import SceneManager, open_video
    from scenedetect.detectors import ContentDetector

    video = open_video(path, backend="pyav")
    fps = float(video.frame_rate)
    thumbs: list[tuple[float, bytes]] = []
    manager = SceneManager()
    manager.auto_downscale = False
    manager.downscale = max(1, round(max(video.frame_size) / 256))  # detection at about 256 px wide
    if options.method == "scenes":
        min_frames = max(1, round(options.min_clip_s * fps))
        manager.add_detector(ContentDetector(threshold=options.threshold, min_scene_len=min_frames))
    last = [0.0]
    manager.add_detector(_tap_detector(options, thumbs, last))
    frames = manager.detect_scenes(video)
    if frames == 0 or not thumbs:
        raise ValueError("no frame could be decoded")
    end = last[0] + 1.0 / fps  # the last frame's time and length (the container's frame rate may lie)
    cuts = [round(a.seconds, 3) for a, _ in manager.get_scene_list()[1:]] if options.method == "scenes" else []
    times = np.array([t for t, _ in thumbs])
    clips = []
    for a, b in split_scenes(cuts, end, options):
        inside = np.flatnonzero((times >= a) & (times < b))
        if len(inside) == 0:
            inside = np.array([int(np.argmin(np.abs(times - (a + b) / 2)))])
        pick = inside[np.linspace(0, len(inside) - 1, min(options.caption_frames, len(inside))).round().astype(int)]
        clips.append({"start": a, "end": b, "thumbs": [base64.b64encode(thumbs[i][1]).decode() for i in pick]})
    return {"duration": round(end, 3), "fps": fps, "cuts": cuts, "clips": clips}
