"""Small inputs for the video tests: PyAV-made clips of awkward kinds, a local HTTP server, decode tasks
that crash or hang.

Clips encode each frame's index in its pixels (`frame_levels`, `read_index`), so a test can tell
which source frame a decoded 256x256 frame came from. This module imports nothing relative: the
decode workers import it by name (`video_inputs:crash_task`) with its folder on their sys.path.
"""

from __future__ import annotations

import fractions
import os
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
from lwmkit.pipelines.tools.sample_videos import write_silence

HERE = str(Path(__file__).resolve().parent)
SLOW_S = 3.0
_STEP = 4  # grey levels per index step: survives H.264/VP9 quantisation of flat areas


def frame_levels(i: int) -> tuple[int, int]:
    """(left, right) grey levels of frame i: index i % 60 on the left, i // 60 on the right."""
    return 16 + _STEP * (i % 60), 16 + _STEP * (i // 60)


def index_frame(i: int, w: int, h: int) -> np.ndarray:
    left, right = frame_levels(i)
    a = np.empty((h, w, 3), np.uint8)  # [h, w, 3]
    a[:, : w // 2] = left
    a[:, w // 2 :] = right
    return a


def read_index(frame: np.ndarray) -> int:
    """The index of a decoded (and preprocessed) frame made by `index_frame`, from its flat halves."""
    h, w = frame.shape[:2]
    left = float(frame[h // 4 : 3 * h // 4, w // 8 : 3 * w // 8].mean())
    right = float(frame[h // 4 : 3 * h // 4, 5 * w // 8 : 7 * w // 8].mean())
    return int(round((left - 16) / _STEP)) + 60 * int(round((right - 16) / _STEP))


def write_clip(
    path: str | Path,
    n: int = 12,
    w: int = 64,
    h: int = 48,
    fps: int = 10,
    codec: str = "libx264",
    rotation: int | None = None,
    faststart: bool = False,
    audio: bool = False,
    pix_fmt: str = "yuv420p",
    pattern=index_frame,
) -> str:
    """A clip of n frames `pattern(i, w, h)` (index frames by default); H.264 in MP4, or VP9 with libvpx-vp9."""
    import av

    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            s.options = {"preset": "ultrafast", "crf": "10"}
        if rotation is not None:
            s.set_display_rotation(rotation)
        a = c.add_stream("aac", rate=8000) if audio else None
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(pattern(i, w, h), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            _write_audio(c, a, seconds=n / fps)
    return str(path)


def _write_audio(c, stream, seconds: float) -> None:
    write_silence(c, stream, 8000, max(1, int(seconds * 8000 / 1024)))


def write_vfr_clip(path: str | Path, times_ms: Sequence[int], w: int = 64, h: int = 48) -> str:
    """An H.264 MP4 whose frame i starts at times_ms[i] (variable frame rate)."""
    import av

    tb = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.time_base = s.codec_context.time_base = tb
        s.options = {"preset": "ultrafast", "crf": "10"}
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(index_frame(i, w, h), format="rgb24")
            frame.pts, frame.time_base = int(t), tb
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def write_audio_only(path: str | Path, seconds: float = 1.0) -> str:
    import av

    with av.open(str(path), "w", format="mp4") as c:
        _write_audio(c, c.add_stream("aac", rate=8000), seconds)
    return str(path)


def write_zero_frame_clip(path: str | Path) -> str:
    """A WebM with a declared VP9 video stream that holds no frame (and some Opus audio)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libvpx-vp9", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        write_silence(c, c.add_stream("libopus", rate=48000), 48000, 5, 960)
    return str(path)


def corner_frame(i: int, w: int, h: int) -> np.ndarray:
    """Black with a white top-left quadrant: shows which way a frame was turned."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = 255
    return a


def truncate(src: str | Path, dest: str | Path, keep: float = 0.5) -> str:
    data = Path(src).read_bytes()
    Path(dest).write_bytes(data[: int(len(data) * keep)])
    return str(dest)


# --- decode tasks for the worker tests (run inside decode workers) -------------------------------------


def crash_task(job: dict) -> Iterator[tuple]:
    """Decodes normally, except that a path containing "crash" aborts the process after one chunk."""
    from lwmkit.pipelines.videos.frames import decode_video

    for n, event in enumerate(decode_video(job)):
        yield event
        if n >= 1 and "crash" in os.path.basename(job["path"]):
            os.abort()


def hang_task(job: dict) -> Iterator[tuple]:
    """Sleeps before its first message when the path contains "hang"; decodes otherwise."""
    from lwmkit.pipelines.videos.frames import decode_video

    if "hang" in os.path.basename(job["path"]):
        time.sleep(60)
    yield from decode_video(job)


def rss_task(job: dict) -> Iterator[tuple]:
    """Keeps `job["leak_mb"]` MB alive in the process (a leaking decoder), then decodes."""
    from lwmkit.pipelines.videos.frames import decode_video

    _LEAK.append(np.ones(int(job.get("leak_mb", 0)) << 20, np.uint8))
    yield from decode_video(job)


def pid_task(job: dict) -> Iterator[tuple]:
    """Reports the worker's process id as its meta (to watch recycling)."""
    yield "meta", {"pid": os.getpid(), "frames": 0}


_LEAK: list[np.ndarray] = []


# --- a local HTTP server -------------------------------------------------------------------------------

_TYPES = {".mp4": "video/mp4", ".webm": "video/webm", ".avi": "video/x-msvideo", ".m4a": "audio/mp4"}


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: dict[str, int] = {}
    times: dict[str, list[float]] = {}

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "application/octet-stream"):
        from .local_server import send_body  # not at the top: see `serve`

        send_body(self, code, body, {"Content-Type": ctype})

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        n = self.hits[path] = self.hits.get(path, 0) + 1
        self.times.setdefault(path, []).append(time.monotonic())
        name = path.rsplit("/", 1)[-1]
        ctype = _TYPES.get(os.path.splitext(name)[1], "application/octet-stream")
        if path.startswith("/v/") and name in self.files:
            self._send(200, self.files[name], ctype)
        elif path.startswith("/flaky/") and name in self.files:  # /flaky/<k>/<name>: 503 k times, then the video
            fails = int(path.split("/")[2])
            self._send(503, b"busy") if n <= fails else self._send(200, self.files[name], ctype)
        elif path.startswith("/slow/"):
            time.sleep(SLOW_S)
            self._send(200, self.files.get(name, b""), ctype)
        elif path == "/page":
            self._send(200, b"<html><head><title>A page</title></head><body>no video here</body></html>", "text/html")
        elif path == "/private":
            self._send(403, b"This video is private", "text/plain")
        else:
            self._send(404, b"not found", "text/plain")


def serve(files: dict[str, bytes]):
    """The test server with this module's handler (see `local_server.LocalServer`)."""
    # Imported here: decode workers load this module on its own (not as part of the tests
    # package) for its tasks, where a relative import at the top would fail.
    from .local_server import serve_with

    return serve_with(_Handler, files)
