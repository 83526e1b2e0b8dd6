"""A deterministic OpenAI-compatible server for the video-QA tests, on 127.0.0.1 (port 0).

Caption requests (a user message whose content holds `image_url` parts) are checked: every image
must be a `data:image/jpeg;base64,` URL that decodes as a JPEG, or the server answers 400. The reply
names the images' mean grey level. By the sha256 of a request's images (`bucket`, 0..9):
    bucket 1   the first reply is not JSON (the caption is retried as a new attempt)
    bucket 2   503 first, then ok (the client retries)
    bucket 3   always an empty caption (the clip fails; its raw replies go to failures.jsonl)
QA requests (text only) get a pair per timeline line `[n] ...` for the first and last clip, and one
pair naming clip 999 (outside the video: left out by validation).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from .local_server import ServedInThread, send_json

_LINE = re.compile(r"^\[(\d+)\] (\S+)-(\S+): (.*)$", re.M)


def bucket(images: list[str]) -> int:
    return int(hashlib.sha256("".join(images).encode()).hexdigest()[:8], 16) % 10


@dataclass
class VideoQAServer(ServedInThread):
    log: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 - the http.server API
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                status, content = server._answer(request)
                if status != 200:
                    body = json.dumps({"error": {"message": content}}).encode()
                elif content is None:
                    body = b'{"choices": [{"message": {"content": "cut sh'
                else:
                    body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                                       "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}}).encode()
                send_json(self, status, body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.log)

    def _count(self, key: str) -> int:
        with self._lock:
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
            return n

    def _answer(self, request: dict) -> tuple[int, str | None]:
        from PIL import Image

        user = request["messages"][-1]["content"]
        if isinstance(user, list):
            images = [p["image_url"]["url"] for p in user if p.get("type") == "image_url"]
            with self._lock:
                self.log.append({"kind": "caption", "images": len(images)})
            levels = []
            for url in images:
                if not url.startswith("data:image/jpeg;base64,"):
                    return 400, "image parts must be data:image/jpeg;base64 URLs"
                img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
                if img.format != "JPEG":
                    return 400, f"image is {img.format}"
                levels.append(int(np.asarray(img.convert("L")).sum()) // (img.width * img.height))
            if not images:
                return 400, "no image part"
            b, n = bucket(images), self._count("".join(images))
            if b == 1 and n == 0:
                return 200, None
            if b == 2 and n == 0:
                return 503, "busy"
            if b == 3:
                return 200, "   "
            return 200, f"A scene of grey level {levels[0]} with {len(images)} frames."
        with self._lock:
            self.log.append({"kind": "qa"})
        lines = _LINE.findall(user)
        first, last = lines[0], lines[-1]
        pairs = [
            {"question": f"What is seen at {first[1]}?", "answer": first[3], "clips": [int(first[0])]},
            {"question": f"What is seen at the end, {last[1]}?", "answer": last[3], "clips": [int(last[0])]},
            {"question": "What happens after the video?", "answer": "Nothing.", "clips": [999]},
        ]
        return 200, "```json\n" + json.dumps(pairs) + "\n```"
