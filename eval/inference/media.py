"""Media files for inference: images and videos in (as LWM's 256x256 frames), PNG and MP4 out.

Video is read with PyAV. Frames are sampled by count, as LWM's vision chat (lwm/vision_chat.py)
and the video pipeline (`pipelines/videos/index.py`) do: a clip of n frames keeps all of them when
n <= max_frames, else the frames at `linspace(0, n - 1, max_frames)` truncated to ints (LWM's
`dtype=int`). Each kept frame gets LWM's image preprocessing (`lwmkit.tokenizers.vision.load_image`:
RGB, short side 256, centre crop).

    before: clip.mp4, 300 frames of 1280x720, max_frames=4
    after:  uint8 [4, 256, 256, 3], frames 0, 99, 199, 299

Imports neither JAX nor PyAV until a function needs them.

Example:
    >>> frames = read_frames("clip.mp4", max_frames=8)     # uint8 [F<=8, 256, 256, 3]
    >>> write_video("out.mp4", frames, fps=4)
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from lwmkit.tokenizers.vision import ImageError, load_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_CODECS = ("libx264", "h264", "mpeg4")  # the first one this PyAV build can encode is used


class MediaError(ValueError):
    """A media file cannot be read or written (the message names the file and the reason)."""


def sample_frame_indices(total: int, max_frames: int) -> list[int]:
    """Frame indices kept from a clip of `total` frames: all when total <= max_frames, else
    `max_frames` indices spread evenly by count (linspace truncated, as LWM), first and last included.

    Example:
        >>> sample_frame_indices(300, 4)
        [0, 99, 199, 299]

    Raises:
      ValueError: total < 0 or max_frames < 1.
    """
    if total < 0 or max_frames < 1:
        raise ValueError(
            f"sample_frame_indices(total={total}, max_frames={max_frames}): need total >= 0, max_frames >= 1"
        )
    if total <= max_frames:
        return list(range(total))
    return np.linspace(0, total - 1, max_frames).astype(np.int64).tolist()


def is_image(path: str) -> bool:
    """Whether `path` is read as an image (by extension); anything else is read as a video."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def read_image(path: str) -> np.ndarray:
    """An image file as one preprocessed frame, uint8 [1, 256, 256, 3].

    Raises:
      MediaError: the file cannot be read or is not a usable image.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        return load_image(data, name=path)[None]
    except OSError as e:
        raise MediaError(f"{path}: cannot read: {e}") from e
    except ImageError as e:
        raise MediaError(str(e)) from e


def _frame_bytes(frame: Any) -> bytes:
    """A decoded PyAV frame as BMP bytes (uncompressed: cheap), for `load_image`."""
    buf = io.BytesIO()
    frame.to_image().save(buf, format="BMP")
    return buf.getvalue()


def _open_video(path: str):
    import av

    try:
        container = av.open(path)
    except (OSError, av.FFmpegError) as e:
        raise MediaError(f"{path}: cannot open as a video: {e}") from e
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: no video stream")
    return container


def count_frames(path: str) -> int:
    """Frames in the first video stream, counted from its packets (no decoding).

    Raises:
      MediaError: the file is not a readable video.
    """
    import av

    with _open_video(path) as container:
        stream = container.streams.video[0]
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: damaged video: {e}") from e


def _decode(path: str) -> Iterator[Any]:
    import av

    with _open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            yield from container.decode(stream)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: damaged video: {e}") from e


def read_video(path: str, max_frames: int) -> np.ndarray:
    """A video's frames sampled by count (`sample_frame_indices`), preprocessed: uint8 [F, 256, 256, 3].

    Frames are decoded in order and only the kept ones are converted, so memory holds F frames.

    Raises:
      MediaError: the file is not a readable video, or has no frames.
    """
    total = count_frames(path)
    for _ in range(2):  # a second pass only when packets and decoded frames disagree
        wanted = sample_frame_indices(total, max_frames)
        want, kept, seen = set(wanted), [], 0
        for i, frame in enumerate(_decode(path)):
            seen = i + 1
            if i in want:
                try:
                    kept.append(load_image(_frame_bytes(frame), name=f"{path} frame {i}"))
                except ImageError as e:
                    raise MediaError(str(e)) from e
        if seen == 0:
            raise MediaError(f"{path}: no video frames")
        if len(kept) == len(wanted) and seen == total:
            return np.stack(kept)
        total = seen
    raise MediaError(f"{path}: decoded a different number of frames on each pass")


def read_frames(path: str, max_frames: int = 8) -> np.ndarray:
    """An image (one frame) or a video (sampled to at most max_frames): uint8 [F, 256, 256, 3]."""
    if not os.path.exists(path):
        raise MediaError(f"{path}: no such file")
    return read_image(path) if is_image(path) else read_video(path, max_frames)


def read_text(path: str) -> str:
    """A UTF-8 text file (a document to chat about).

    Raises:
      MediaError: the file cannot be read or is not UTF-8.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path}: cannot read as UTF-8 text: {e}") from e


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"frames must be uint8 [F>0, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def write_png(path: str, frame: np.ndarray) -> None:
    """Writes one uint8 [H, W, 3] frame as PNG."""
    from PIL import Image

    frame = _check_frames(np.asarray(frame)[None])[0]
    try:
        Image.fromarray(frame).save(path, format="PNG")
    except OSError as e:
        raise MediaError(f"{path}: cannot write: {e}") from e


def write_video(path: str, frames: np.ndarray, fps: int = 4) -> None:
    """Writes uint8 [F, H, W, 3] frames as an MP4 (H.264 when available, yuv420p; LWM writes 4 fps).

    Raises:
      ValueError: bad frames or fps; MediaError: the file cannot be written.
    """
    import av

    frames = _check_frames(frames)
    if not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps={fps!r}: must be an int >= 1")
    codec = next((c for c in VIDEO_CODECS if c in av.codecs_available), None)
    if codec is None:
        raise MediaError(f"{path}: this PyAV build has none of the encoders {list(VIDEO_CODECS)}")
    h, w = frames.shape[1:3]
    try:
        with av.open(path, mode="w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
            for frame in frames:
                even = np.ascontiguousarray(frame[: h - h % 2, : w - w % 2])  # yuv420p needs even sides
                picture = av.VideoFrame.from_ndarray(even, format="rgb24")
                container.mux(stream.encode(picture))
            container.mux(stream.encode(None))
    except (OSError, av.FFmpegError) as e:
        raise MediaError(f"{path}: cannot write the video: {e}") from e
