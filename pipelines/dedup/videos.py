"""Videos: a pHash per frame sampled on a fixed time grid, and a clip-level rule for two sequences.

Sampling: one frame every `step_ms` of presentation time, counted from the first frame (so a
container's start offset does not matter); when a video would give more than `max_frames`, the
step doubles (and every other frame is dropped) until it fits. Two copies of one clip therefore
sample the same grid, or grids whose steps differ by a power of two (the rule then thins the
denser one). Frames are hashed as images (`images.phash64`); flat frames (black, blank) are marked
unusable: they neither make bucket keys nor count as matches.

Clip rule: for every alignment offset between the two sequences (a re-upload may start a few
seconds later, or be a part of the other), count the aligned pairs of usable frames whose hashes
are within `max_distance`; the clip similarity is the best count divided by the usable frames of
the shorter clip. Clips are near-duplicates when it is >= `clip_threshold` (0.8) and the shorter
clip has at least `min_frames` usable frames. Re-encoding (another codec, bitrate, size) keeps
frame hashes within a few bits; an offset of a whole step is found by the offset search, and a
fraction of a step changes the sampled frames by a fraction of a step of motion.

Candidates: every usable frame makes `bands` bucket keys of its hash (the image bands' bits);
two clips with one matching frame meet in a bucket, and the rule decides.

Example:
    >>> cfg = VideoHashConfig()
    >>> a = video_sketch("tree.avi", "tree.avi", cfg)          # 68 frames at 15 fps -> 9 samples
    >>> b = video_sketch("tree.mp4", "tree-h264.mp4", cfg)     # the same clip re-encoded
    >>> VideoMatcher(cfg).similarity(a, b)
    1.0
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from lwmkit.pipelines.dedup.bands import hash_band_keys
from lwmkit.pipelines.dedup.images import BITS, HashBanding, hamming, phash64
from lwmkit.pipelines.dedup.sketch import Sketch, dist_version, params_digest
from lwmkit.pipelines.engine.outputs import is_local, open_input


@dataclass(frozen=True)
class VideoHashConfig(HashBanding):
    """Video near-dedup parameters (see the module docstring)."""

    step_ms: int = 500
    max_frames: int = 128
    max_distance: int = 12
    clip_threshold: float = 0.8
    min_frames: int = 2
    bands: int = 8
    rows: int = 12
    seed: int = 1
    bucket_anchors: int = 1024

    def __post_init__(self):
        if self.step_ms < 1:
            raise ValueError(f"VideoHashConfig.step_ms must be >= 1, got {self.step_ms}")
        if self.max_frames < 2:
            raise ValueError(f"VideoHashConfig.max_frames must be >= 2, got {self.max_frames}")
        if not 0.0 < self.clip_threshold <= 1.0:
            raise ValueError(f"VideoHashConfig.clip_threshold must be in (0, 1], got {self.clip_threshold}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"VideoHashConfig.min_frames must be in [1, max_frames], got {self.min_frames}")
        super().__post_init__()


def sample_hashes(frames: Iterable[tuple[float, Any]], config: VideoHashConfig) -> Sketch:
    """Hashes the frame shown at each grid time, from `(seconds, frame)` pairs in presentation order.

    A frame is a PIL image or anything with `.to_image()` (a PyAV frame: only frames that are shown
    at a grid time are converted). The frame shown at time T is the last one whose time <= T.

    Returns a Sketch keyed "_" (the caller names it); size = the last frame's time in milliseconds.
    """
    step = config.step_ms
    values: list[int] = []
    usable: list[bool] = []
    start = None
    prev = None  # (ms, frame, cached (hash, flat) or None)

    def emit(entry):
        if entry[2] is None:
            image = entry[1].to_image() if hasattr(entry[1], "to_image") else entry[1]
            entry[2] = phash64(image)
        values.append(entry[2][0])
        usable.append(not entry[2][1])

    def grow(step: int) -> int:
        nonlocal values, usable
        while len(values) > config.max_frames:  # double the step: keep the slots of the coarser grid
            step *= 2
            values, usable = values[::2], usable[::2]
        return step

    for t, frame in frames:
        start = t if start is None else start
        ms = int(round((t - start) * 1000))
        while prev is not None and ms > len(values) * step:
            emit(prev)
            step = grow(step)
        prev = [ms, frame, None]
    if prev is None:
        return Sketch("_", 0, np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=bool), step)
    while len(values) * step <= prev[0]:
        emit(prev)
        step = grow(step)
    return Sketch("_", prev[0], np.array(values, dtype=np.uint64), np.array(usable, dtype=bool), step)


def decode_frames(source) -> Iterator[tuple[float, Any]]:
    """(time in seconds, PyAV frame) of every frame of the first video stream."""
    import av

    with av.open(source) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.time is not None:
                yield float(frame.time), frame


class VideoClip(NamedTuple):
    """The part of a video file a job uses: frames whose time lies in [start, end) seconds (None:
    from the first frame / to the last). `source` is a path (local or any Beam filesystem) or a
    binary file object. Two rows naming other ranges of one file are then sketched apart."""

    source: Any
    start: float | None = None
    end: float | None = None


def _in_range(frames: Iterable[tuple[float, Any]], start: float | None, end: float | None):
    for t, frame in frames:
        if end is not None and t >= end:
            return
        if start is None or t >= start:
            yield t, frame


def video_sketch(key: str, source, config: VideoHashConfig | None = None) -> Sketch:
    """The sketch of one video file (a path, a binary file object or a `VideoClip` of either):
    uint64 [frames] pHashes.

    Raises:
      ValueError: the file has no video stream, cannot be decoded, or has no frame (names the key).
    """
    import av

    config = config or VideoHashConfig()
    start = end = None
    if isinstance(source, VideoClip):
        source, start, end = source
    try:
        if isinstance(source, str) and not is_local(source):
            with open_input(source) as f:
                s = sample_hashes(_in_range(decode_frames(f), start, end), config)
        else:
            s = sample_hashes(_in_range(decode_frames(source), start, end), config)
    except (av.error.FFmpegError, ValueError) as e:
        raise ValueError(f"video {key!r} cannot be hashed: {e}") from e
    if len(s.values) == 0:
        raise ValueError(f"video {key!r} has no decodable frame")
    return Sketch(key, s.size, s.values, s.mask, s.step_ms)


def _on_grid(s: Sketch, step: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The sequence thinned to `step` (a multiple of its own step): one (values, mask) per phase."""
    k = step // s.step_ms
    return [(s.values[p::k], s.mask[p::k]) for p in range(k)]


def clip_similarity(a: Sketch, b: Sketch, max_distance: int) -> float:
    """Best share of aligned usable frames within `max_distance` (see the module docstring)."""
    step = max(a.step_ms, b.step_ms)
    lo, hi = min(a.step_ms, b.step_ms), step
    if hi % lo or (hi // lo) & (hi // lo - 1):
        return 0.0  # grids from different step settings: not comparable
    best = 0.0
    for va, ma in _on_grid(a, step):
        for vb, mb in _on_grid(b, step):
            usable = min(int(ma.sum()), int(mb.sum()))
            if usable == 0:
                continue
            match = (hamming(va[:, None], vb[None, :]) <= max_distance) & ma[:, None] & mb[None, :]  # [n, m]
            n, m = match.shape
            counts = [int(np.trace(match, offset=o)) for o in range(-(n - 1), m)]
            best = max(best, min(1.0, max(counts) / usable))
    return best


class VideoMatcher:
    """Bands frame hashes and applies the clip rule (the `Matcher` that `NearDuplicates` runs)."""

    kind = "video"

    def __init__(self, config: VideoHashConfig | None = None):
        self.config = config or VideoHashConfig()

    def band_keys(self, sketch: Sketch) -> list[bytes]:
        keys: set[bytes] = set()
        for value, usable in zip(sketch.values, sketch.mask, strict=True):
            if usable:
                keys.update(hash_band_keys(int(value), self.config.positions))
        return sorted(keys)

    def similarity(self, a: Sketch, b: Sketch) -> float:
        return clip_similarity(a, b, self.config.max_distance)

    def _usable(self, s: Sketch) -> int:
        return int(s.mask.sum())

    def bucket_pairs(self, members: Sequence[Sketch]) -> Iterator[tuple[int, int, float]]:
        c = self.config
        for i in range(min(len(members), c.bucket_anchors)):
            for j in range(i + 1, len(members)):
                if min(self._usable(members[i]), self._usable(members[j])) < c.min_frames:
                    continue
                sim = self.similarity(members[i], members[j])
                if sim >= c.clip_threshold:
                    yield i, j, sim

    def params(self) -> dict[str, Any]:
        c = self.config
        return {
            "method": "phash-sequence-clip-rule",
            "library": "imagehash.phash",
            "library_version": dist_version("ImageHash"),
            "step_ms": c.step_ms,
            "max_frames": c.max_frames,
            "max_distance": c.max_distance,
            "clip_threshold": c.clip_threshold,
            "min_frames": c.min_frames,
            "bands": c.bands,
            "rows": c.rows,
            "seed": c.seed,
            "bucket_anchors": c.bucket_anchors,
            "similarity": "best share of aligned usable frames within max_distance, over the shorter clip",
        }

    @property
    def fingerprint(self) -> str:
        c = self.config
        return params_digest({"library": "imagehash.phash", "version": dist_version("ImageHash"), "bits": BITS,
                              "step_ms": c.step_ms, "max_frames": c.max_frames})
