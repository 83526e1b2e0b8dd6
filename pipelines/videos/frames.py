"""One video file -> LWM frames: decord or PyAV decoding of the sampled frames, and their preprocessing.

This is the code that runs inside the decode worker processes (`video_workers`): it imports no Beam
and no JAX, and every failure is a `VideoError(reason, detail)`: those of `video_index.probe` and
`sample_frames`, and

    corrupt_video      the decoder fails on a sampled frame, or no decoder can open the file
    truncated_video    decoding ends before a sampled frame
    decoder_mismatch   decord lists another number of frames than the container (PyAV takes over;
                       the reason only shows when decord is the only decoder allowed)

Decoding tries the decoders in `DecodeOptions.decoders` order: decord (`get_batch`, seeking by
itself) and PyAV (sequential, seeking when the next sample is more than `SEEK_GAP_S` ahead). A
decoder that fails before its first frame hands over to the next; rotated videos go straight to
PyAV (decord ignores the display matrix, or fails on it). Frames are turned upright (the display
matrix's counter-clockwise angle), then resized and centre-cropped like images
(`tokenizers.vision.preprocess_frame`) and yielded in chunks of `chunk_frames`.

Example, a 10 fps clip of 30 frames, count sampling with num_frames 4:
    decode_video({"path": "clip.mp4", "options": DecodeOptions(FrameSampling("count", 4)).to_json()})
      yields ("meta", {"frame_indices": [0, 9, 19, 29], "decoder": "decord", ...}),
             ("frames", 0, uint8 [4, 256, 256, 3])
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from lwmkit.pipelines.engine.job_options import check_ranges
from lwmkit.pipelines.videos.index import (
    FrameSampling,
    VideoError,
    VideoIndex,
    open_container,
    probe,
    sample_frames,
)

DECODERS = ("decord", "pyav")
SEEK_GAP_S = 8.0  # PyAV seeks when the next sample is further ahead than this (about a few GOPs)
# DecodeOptions fields a job's manifest leaves out (`DecodeOptions.recorded`).
UNRECORDED_FIELDS = ("workers", "videos_per_worker", "max_worker_rss_mb", "decoder_threads")


@dataclass(frozen=True)
class DecodeOptions:
    """How videos are decoded, and how the decode workers are run (see `video_workers`).

    Attributes:
      sampling: which frames are taken.
      decoders: decoders to try, in order ("decord", "pyav").
      min_side: videos with a shorter side are dropped (too_small); smaller frames than 256 are
        upscaled like images.
      max_pixels: videos with more pixels per frame are dropped (too_many_pixels) before decoding.
      chunk_frames: frames per message from a worker: bounds the frames in flight (memory).
      time_budget_s: the longest a video may keep the job waiting on its decoder (the time spent
        encoding its frames downstream does not count); past it the worker is killed (timeout).
      workers: decode processes per Beam worker process.
      videos_per_worker: a decode process is replaced after this many videos (leaky decoders).
      max_worker_rss_mb: ... or as soon as its resident memory exceeds this.
      decoder_threads: decoding threads inside one decode process.
      pyav_from_s: videos (or clips) at least this long decode with PyAV first, decord after it:
        decord's decoding thread reads ahead into memory while the worker waits for the VQGAN, so a
        worker's memory grows with the video's length (dmlc/decord#208), where PyAV's stays flat.
        Shorter videos keep decord's faster seeking.
    """

    sampling: FrameSampling = FrameSampling()
    decoders: tuple[str, ...] = DECODERS
    min_side: int = 16
    max_pixels: int = 3840 * 2160
    chunk_frames: int = 16
    time_budget_s: float = 600.0
    workers: int = 1
    videos_per_worker: int = 32
    max_worker_rss_mb: int = 4096
    decoder_threads: int = 1
    pyav_from_s: float = 300.0

    def __post_init__(self):
        known = all(d in DECODERS for d in self.decoders)
        if not self.decoders or not known or len(set(self.decoders)) < len(self.decoders):
            raise ValueError(f"decoders: {self.decoders!r} must be distinct names from {list(DECODERS)}")
        check_ranges(self, min_side="1..256")
        if not self.min_side**2 <= self.max_pixels <= 1 << 32:
            raise ValueError(f"max_pixels: {self.max_pixels} is outside min_side**2..{1 << 32}")
        check_ranges(
            self, chunk_frames="1..1024", time_budget_s="(0, 86400]", workers="1..256",
            videos_per_worker=f"1..{1 << 20}", max_worker_rss_mb=f"64..{1 << 20}", decoder_threads="1..64",
            pyav_from_s="0..1e9",
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["decoders"] = list(self.decoders)
        return d

    def recorded(self) -> dict[str, Any]:
        """`to_json()` as a job's manifest records it: without the worker settings, which shape how
        the job runs, not what it makes."""
        return {k: v for k, v in self.to_json().items() if k not in UNRECORDED_FIELDS}


# --- decoding ----------------------------------------------------------------------------------------


def _upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    k = (rotation // 90) % 4
    return np.rot90(frame, k) if k else frame  # counter-clockwise, as the display matrix says


def _decord_chunks(path: str, index: VideoIndex, positions: np.ndarray, chunk: int, threads: int):
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
    if len(reader) != len(index.pts):
        raise VideoError("decoder_mismatch", f"decord lists {len(reader)} frames, the container {len(index.pts)}")
    for start in range(0, len(positions), chunk):
        batch = reader.get_batch([int(i) for i in positions[start : start + chunk]]).asnumpy()  # [k, h, w, 3]
        # decord's decoding thread goes on decoding past the batch into memory while we wait on the
        # pipe (dmlc/decord#208): without this a worker grew with the video (120 -> 307 MiB for 600 ->
        # 3,600 frames of 10 and 60 minutes). The next get_batch seeks to its frames by itself.
        reader.seek(0)
        yield start, list(batch)


def _pyav_chunks(path: str, index: VideoIndex, positions: np.ndarray, chunk: int, threads: int):

    where = {int(p): i for i, p in enumerate(index.pts)}
    with open_container(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads > 1 else "SLICE"
        stream.codec_context.thread_count = threads
        k, start, pending = 0, 0, []
        last_time, sought = -math.inf, -1
        while k < len(positions):
            target = int(positions[k])
            if index.times[target] - last_time > SEEK_GAP_S and sought != target:
                container.seek(int(index.pts[target]), stream=stream, backward=True, any_frame=False)
                sought = target
            reseek = False
            for frame in container.decode(stream):
                t = frame.pts if frame.pts is not None else frame.dts
                i = where.get(int(t)) if t is not None else None
                if i is None:
                    continue
                last_time = index.times[i]
                if i < target:
                    if index.times[target] - last_time > SEEK_GAP_S and sought != target:
                        reseek = True
                        break
                    continue
                if i > target:
                    raise VideoError("corrupt_video", f"frame {target} never came out of the decoder (got {i})")
                pending.append(_upright(frame.to_ndarray(format="rgb24"), index.rotation))
                k += 1
                if len(pending) == chunk or k == len(positions):
                    yield start, pending
                    start, pending = k, []
                if k == len(positions):
                    return
                target = int(positions[k])
            if not reseek:
                raise VideoError(
                    "truncated_video",
                    f"decoding ended before frame {target} of {len(index.pts)} ({k} sampled frames decoded)",
                )


_DECODE = {"decord": _decord_chunks, "pyav": _pyav_chunks}


def _decoder_failure(decoder: str, e: Exception) -> VideoError:
    if isinstance(e, VideoError):
        return e
    return VideoError("corrupt_video", f"{decoder}: {type(e).__name__}: {str(e)[:300]}")


def decode_video(job: dict[str, Any]) -> Iterator[tuple]:
    """Decodes one video's sampled frames; the decode workers' task.

    Args:
      job: {"path": local file, "name": for messages, "clip": [start, end] (None for open ends),
        "options": `DecodeOptions.to_json()`, "cwd": the folder a relative path is relative to
        (the sender's working folder: a worker started earlier may have started in another)}.

    Yields:
      ("meta", dict) once, before any frame: frame positions and times, the decoder, the source's
      size, rotation, duration and frame count; then ("frames", first position, uint8 [k, 256, 256, 3])
      chunks in order.

    Raises:
      VideoError: see the module docstring.
    """
    from lwmkit.tokenizers.vision import ImageError, ImageOptions, preprocess_frame

    raw = dict(job["options"])
    raw["sampling"] = FrameSampling(**raw["sampling"])
    raw["decoders"] = tuple(raw["decoders"])
    options = DecodeOptions(**raw)
    path, name = job["path"], job.get("name") or job["path"]
    if job.get("cwd") and os.getcwd() != job["cwd"]:
        os.chdir(job["cwd"])  # a worker started for an earlier job: relative paths are the sender's
    clip = tuple(job.get("clip") or (None, None))
    index = probe(path, options.min_side, options.max_pixels)
    positions = sample_frames(index.times, options.sampling, clip, index.end)
    image_options = ImageOptions(min_side=options.min_side, max_pixels=max(options.max_pixels, options.min_side**2))
    decoders = [d for d in options.decoders if not (d == "decord" and index.rotation)] or ["pyav"]
    start, stop = clip[0] or 0.0, index.end if clip[1] is None else min(clip[1], index.end)
    if "pyav" in decoders and stop - start >= options.pyav_from_s:  # flat memory for long videos
        decoders = ["pyav"] + [d for d in decoders if d != "pyav"]
    tried: list[str] = []
    for n, decoder in enumerate(decoders):
        chunks = _DECODE[decoder](path, index, positions, options.chunk_frames, options.decoder_threads)
        try:
            first = next(chunks)
        except ImportError as e:
            tried.append(f"{decoder}: not installed ({e})")
            continue
        except Exception as e:  # a decoder failing before its first frame hands over to the next
            failure = _decoder_failure(decoder, e)
            tried.append(f"{decoder}: {failure}")
            if n + 1 < len(decoders):
                continue
            raise VideoError(failure.reason, "; ".join(tried)) from e
        yield "meta", {
            "decoder": decoder,
            "fallbacks": tried,
            "frames": int(len(positions)),
            "frame_indices": positions.tolist(),
            "frame_times": [round(float(t), 3) for t in index.times[positions]],
            "source_frames": int(len(index.pts)),
            "duration": round(index.end, 3),
            "declared_duration": None if index.duration is None else round(index.duration, 3),
            "width": index.width,
            "height": index.height,
            "rotation": index.rotation,
            "codec": index.codec,
        }
        try:
            for start, frames in _chain_first(first, chunks):
                out = np.empty((len(frames), 256, 256, 3), np.uint8)  # [k, 256, 256, 3]
                for j, f in enumerate(frames):
                    out[j] = preprocess_frame(f, image_options, name)
                yield "frames", start, out
        except ImageError as e:
            raise VideoError(e.reason, e.detail) from e
        except Exception as e:
            raise _decoder_failure(decoder, e) from e
        return
    raise VideoError("corrupt_video", "no decoder could open it: " + "; ".join(tried))


def _chain_first(first, rest):
    yield first
    yield from rest
