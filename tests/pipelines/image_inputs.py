"""Small inputs for the image-text tests: PIL-made images of awkward kinds, tars, parquet, an HTTP server.

`images()` makes one encoded image per kind (all tiny, so tests stay fast). `serve()` starts a
`ThreadingHTTPServer` on 127.0.0.1 in a daemon thread with routes that answer, 404, hang, lie about
their size, fail transiently and redirect.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np

from .local_server import send_body, serve_with

SLOW_S = 2.0  # the slow route's delay; tests use a timeout well below it


def _pattern(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth colour pattern (distinct per seed): compresses well and survives JPEG."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1) + seed * 37) % 256
    g = (y * 255 // max(h - 1, 1) + seed * 59) % 256
    b = ((x + y) * 3 + seed * 11) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)  # [h, w, 3]


def encode(im, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb(w: int = 300, h: int = 260, seed: int = 0, fmt: str = "PNG") -> bytes:
    from PIL import Image

    return encode(Image.fromarray(_pattern(w, h, seed)), fmt)


def images() -> dict[str, bytes]:
    """Encoded images by kind; the awkward ones are each handled (converted) by `load_image`."""
    from PIL import Image

    base = Image.fromarray(_pattern(300, 260, 1))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    gif_frames = [Image.fromarray(_pattern(280, 280, s)).convert("P") for s in (2, 3)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, format="GIF", save_all=True, append_images=gif_frames[1:], duration=100, loop=0)
    sixteen = Image.fromarray((np.arange(270 * 270, dtype=np.uint32).reshape(270, 270) % 65536).astype(np.uint16))
    return {
        "rgb_jpeg": encode(base, "JPEG", quality=90),
        "rgb_png": encode(base, "PNG"),
        "gray": encode(base.convert("L"), "PNG"),
        "palette": encode(base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "sixteen_bit": encode(sixteen, "PNG"),
        "cmyk": encode(base.convert("CMYK"), "JPEG"),
        "rgba": encode(base.convert("RGBA"), "PNG"),
        "exif_rotated": encode(base, "JPEG", exif=exif),
        "animated": gif.getvalue(),
        "webp": encode(base, "WEBP"),
        "small": rgb(64, 80, seed=4),
    }


def bad_images() -> dict[str, tuple[bytes, str]]:
    """Encoded images load_image refuses, with the reason (too_many_pixels needs max_pixels <= 1e6)."""
    good = rgb(300, 300, seed=5, fmt="JPEG")
    return {
        "corrupt": (b"\x89PNG\r\n\x1a\n this is no image at all" * 4, "corrupt_image"),
        "truncated": (good[: len(good) // 2], "truncated_image"),
        "tiny": (rgb(16, 16, seed=6), "too_small"),
        "bomb": (rgb(1200, 1000, seed=7), "too_many_pixels"),
    }


def write_tar(path: str | Path, members: Sequence[tuple[str, bytes]], mode: str = "w") -> str:
    """A tar with the given (name, data) members in order (names are not checked: tests need bad ones)."""
    with tarfile.open(str(path), mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def write_parquet(path: str | Path, columns: dict[str, list]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({k: pa.array(v) for k, v in columns.items()}), str(path))
    return str(path)


def write_captions(folder: str | Path, rows: Sequence[dict | bytes]) -> str:
    path = Path(folder) / "captions.jsonl"
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return str(path)


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: dict[str, int] = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        n = self.hits[path] = self.hits.get(path, 0) + 1
        if path.startswith("/img/") and path[5:] in self.files:
            send_body(self, 200, self.files[path[5:]], headers={"Content-Type": "image/png"})
        elif path == "/slow":
            time.sleep(SLOW_S)
            send_body(self, 200, self.files.get("slow", b"late"))
        elif path == "/big":
            send_body(self, 200, b"x" * 10, length=10**9)  # claims a gigabyte
        elif path == "/stream":  # no Content-Length: size known only by counting
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(64):
                    self.wfile.write(b"y" * 4096)
            self.close_connection = True
        elif path == "/flaky":  # 503 twice, then the image
            if n <= 2:
                send_body(self, 503, b"busy")
            else:
                send_body(self, 200, self.files.get("flaky", b"ok"))
        elif path == "/to-ftp":
            send_body(self, 302, headers={"Location": "ftp://127.0.0.1/x.png"})
        elif path == "/redirect-to-metadata":  # a cloud metadata server, never to be reached
            send_body(self, 302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        elif path.startswith("/redirect-loop/"):
            send_body(self, 302, headers={"Location": f"/redirect-loop/{int(path.rsplit('/', 1)[1]) + 1}"})
        elif path == "/to-img":
            send_body(self, 302, headers={"Location": "/img/" + next(iter(self.files), "none")})
        else:
            send_body(self, 404, b"not found")


def serve(files: dict[str, bytes]):
    """The test server with this module's handler (see `local_server.LocalServer`)."""
    return serve_with(_Handler, files)
