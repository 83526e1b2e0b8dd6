"""A video's frame index and which of its frames are sampled: `probe` and `sample_frames`.

Runs inside the decode worker processes (see `video_frames`); imports no Beam and no JAX. Probe
failures are `VideoError`s with one of these reasons:

    missing_file       no such file
    broken_container   not a media file, or one the demuxer cannot open (e.g. an MP4 without moov)
    no_video_stream    no video stream (an audio-only file)
    zero_frames        a video stream without a single frame
    too_many_pixels    width x height above `max_pixels` (read from the first frame)
    too_small          a short side below `min_side`
    truncated_video    the frames end well before the container's declared duration, or demuxing
                       fails part-way (a cut download)
    corrupt_video      the first frame does not decode
    empty_clip         the clip range holds no frame (`sample_frames`)

The frame index is the sorted presentation times of the video stream's non-empty packets (PyAV
demuxes them without decoding), so times are exact for variable frame rate clips and for AVIs whose
header rate is wrong (`../shared/data/video/tree.avi`: 68 frames over 29.6 s, header 15 fps).
Sampling picks frame positions in that index:

    count  LWM's rule: every frame when the clip has at most `num_frames`, else
           `linspace(0, n - 1, num_frames)` truncated to ints (lwm/vision_chat.py)
    fps    one frame per 1/fps seconds from the clip start: the frame showing at that time (the last
           one starting at or before it); a frame picked twice counts once
    both   capped at `max_frames`, again uniformly by count

Example, a 10 fps clip of 30 frames:
    sample_frames(times=[0.0, 0.1, ..., 2.9], FrameSampling("count", num_frames=4)) -> [0, 9, 19, 29]
    sample_frames(times=[0.0, 0.1, ..., 2.9], FrameSampling("fps", fps=1.0)) -> [0, 10, 20]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from lwmkit.pipelines.engine.drops import ReasonError
from lwmkit.pipelines.engine.job_options import check_ranges

SAMPLING_MODES = ("count", "fps")
_TRUNCATION_SLACK = (0.5, 0.05)  # frames may end this early (seconds, share of duration) before it counts


class VideoError(ReasonError):
    """A video cannot be turned into frames; `reason` is one of the module docstring's reasons."""




@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a clip become tokens.

    Attributes:
      mode: "count" (LWM's uniform sampling by count) or "fps" (a target rate).
      num_frames: count mode: the number of frames taken (all of them when the clip has fewer; at
        most max_frames).
      fps: fps mode: frames per second of video taken.
      max_frames: the most frames of one video, in both modes (uniformly by count beyond it).
    """

    mode: str = "count"
    num_frames: int = 32
    fps: float = 1.0
    max_frames: int = 4096

    def __post_init__(self):
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"sampling mode: {self.mode!r} is not one of {list(SAMPLING_MODES)}")
        check_ranges(self, max_frames=f"1..{1 << 20}", num_frames=f"1..{1 << 20}", fps="(0, 240]")




@dataclass(frozen=True)
class VideoIndex:
    """A video stream's frames as the container lists them."""

    pts: np.ndarray  # int64 [n] presentation timestamps, in `time_base` units, sorted
    times: np.ndarray  # float64 [n] seconds from the first frame
    end: float  # seconds from the first frame to the end of the last frame
    duration: float | None  # the container's declared duration (seconds), when it has one
    width: int
    height: int
    rotation: int  # degrees counter-clockwise to turn a decoded frame upright (0, 90, 180, 270)
    codec: str

# --- the frame index -------------------------------------------------------------------------------


def open_container(path: str):
    """`av.open(path)`, with its failures as VideoError (missing_file, broken_container)."""
    import av

    try:
        return av.open(path)
    except FileNotFoundError as e:
        raise VideoError("missing_file", f"{path}: {e.strerror or e}") from e
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise VideoError("broken_container", f"{type(e).__name__}: {e}") from e


def _first_frame(container, stream):
    import av

    try:
        container.seek(0, stream=stream)
        for frame in container.decode(stream):
            return frame
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError("corrupt_video", f"the first frame does not decode: {type(e).__name__}: {e}") from e
    raise VideoError("zero_frames", "the video stream has packets but no frame decodes")


def probe(path: str, min_side: int = 1, max_pixels: int = 1 << 32) -> VideoIndex:
    """Opens a video and lists its frames without decoding them (one frame is decoded for its rotation).

    Raises:
      VideoError: missing_file, broken_container, no_video_stream, zero_frames, too_many_pixels,
        too_small, truncated_video or corrupt_video.
    """
    import av

    with open_container(path) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError("no_video_stream", f"the file has no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        pts: list[int] = []
        demux_error = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # flush packets and AVI's empty "dropped frame" chunks
                t = packet.pts if packet.pts is not None else packet.dts
                if t is not None:
                    pts.append(int(t))
        except (av.error.FFmpegError, OSError) as e:
            demux_error = f"{type(e).__name__}: {e}"
        if not pts:
            if demux_error:
                raise VideoError("broken_container", f"no video packet could be read ({demux_error})")
            raise VideoError("zero_frames", "the video stream holds no frame")
        if demux_error:
            raise VideoError("truncated_video", f"demuxing stopped after {len(pts)} frames: {demux_error}")
        first = _first_frame(container, stream)
        width, height = first.width, first.height
        if width * height > max_pixels:
            raise VideoError("too_many_pixels", f"{width}x{height} = {width * height} pixels > max_pixels {max_pixels}")
        if min(width, height) < min_side:
            raise VideoError("too_small", f"{width}x{height}: short side < min_side {min_side}")
        rotation = int(round(float(getattr(first, "rotation", 0) or 0) / 90.0)) * 90 % 360
        tb = float(stream.time_base)
        arr = np.unique(np.asarray(pts, np.int64))  # sorted; B-frames arrive out of order
        times = (arr - arr[0]).astype(np.float64) * tb
        step = float(np.median(np.diff(times))) if len(times) > 1 else (1.0 / float(stream.average_rate or 1))
        end = float(times[-1] + step)
        duration = None
        if container.duration:
            duration = container.duration / 1e6
        elif stream.duration:
            duration = float(stream.duration * stream.time_base)
        if duration is not None and end + max(_TRUNCATION_SLACK[0], _TRUNCATION_SLACK[1] * duration) < duration:
            raise VideoError(
                "truncated_video", f"the frames end at {end:.2f}s but the container declares {duration:.2f}s"
            )
        return VideoIndex(arr, times, end, duration, width, height, rotation, stream.codec_context.name)


# --- sampling ----------------------------------------------------------------------------------------


def _by_count(candidates: np.ndarray, n: int) -> np.ndarray:
    if len(candidates) <= n:
        return candidates
    return candidates[np.linspace(0, len(candidates) - 1, n).astype(np.int64)]  # LWM: linspace(..., dtype=int)


def sample_frames(
    times: np.ndarray,
    sampling: FrameSampling,
    clip: tuple[float | None, float | None] = (None, None),
    end: float | None = None,
) -> np.ndarray:
    """Frame positions (into `times`) to decode; see the module docstring.

    Args:
      times: float [n] sorted start time of each frame, seconds from the first frame.
      sampling: the rule.
      clip: (start, end) seconds; None = the video's start / end. A frame belongs to the clip when
        it starts in [start, end).
      end: the end of the last frame (default: its start).

    Returns:
      int64 [k] sorted, distinct positions, k >= 1.

    Raises:
      VideoError: empty_clip when the clip holds no frame.
    """
    times = np.asarray(times, np.float64)
    video_end = float(times[-1]) if end is None else float(end)
    lo = 0.0 if clip[0] is None else float(clip[0])
    hi = video_end if clip[1] is None else min(float(clip[1]), video_end)
    first, last = np.searchsorted(times, lo, "left"), np.searchsorted(times, hi, "left")
    if clip[1] is None:
        last = len(times)
    if last <= first:
        raise VideoError("empty_clip", f"no frame starts in [{lo:g}s, {hi:g}s) (the video lasts {video_end:.2f}s)")
    candidates = np.arange(first, last, dtype=np.int64)
    if sampling.mode == "count":
        return _by_count(candidates, min(sampling.num_frames, sampling.max_frames))
    # Sample times spaced 1/fps apart, capped in number before they are ever materialised.
    count = max(1, math.ceil((hi - lo) * sampling.fps - 1e-9))
    targets = lo + np.arange(count, dtype=np.float64) / sampling.fps
    picked = np.searchsorted(times, targets + 1e-9, "right") - 1  # the frame showing at each target
    picked = np.unique(np.clip(picked, first, last - 1))
    return _by_count(picked, sampling.max_frames)
