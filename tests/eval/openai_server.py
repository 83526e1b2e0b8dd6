"""A local OpenAI-compatible server for the evaluator tests: it answers from the context it gets.

It reads the asked city from LWM's question and looks for "The special magic {city} number is: N"
by string search, but only in the first `head` characters of the prompt and in its last `tail`
share (a model that is lost in the middle of long contexts). Short contexts are found at every
depth, long ones only near the start and the end: the familiar heatmap, with a score every case can
be checked against.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.pipelines.local_server import ServedInThread, send_json

QUESTION = re.compile(r"What is the special magic (.+?) number\?")


def visible(prompt: str, head: int, tail: float) -> tuple[str, str]:
    """The two parts of the prompt the server reads."""
    return prompt[:head], prompt[len(prompt) - int(tail * len(prompt)) :]


class FakeOpenAI(ServedInThread):
    """Serves /v1/completions and /v1/chat/completions on 127.0.0.1 (a free port) in a thread.

    Attributes:
      prompts: every prompt received, in arrival order.
      max_active: the most requests handled at the same time.
    """

    def __init__(self, head: int = 3000, tail: float = 0.1, delay: float = 0.05, fail_first: int = 0):
        self.head, self.tail, self.delay, self.fail_first = head, tail, delay, fail_first
        self.prompts: list[str] = []
        self.paths: list[str] = []
        self.active = self.max_active = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                    fail = server.fail_first > 0
                    server.fail_first -= fail
                try:
                    time.sleep(server.delay)
                    if fail:
                        self._send(500, {"error": "overloaded"})
                        return
                    chat = self.path.endswith("/chat/completions")
                    prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                    with server._lock:
                        server.prompts.append(prompt)
                        server.paths.append(self.path)
                    text = server.answer(prompt)
                    choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
                    self._send(200, {"choices": [choice], "model": body["model"]})
                finally:
                    with server._lock:
                        server.active -= 1

            def _send(self, code: int, obj: dict):
                send_json(self, code, json.dumps(obj).encode())

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def answer(self, prompt: str) -> str:
        q = QUESTION.search(prompt)
        if not q:
            return "I do not know."
        city = q.group(1)
        pattern = rf"The special magic {re.escape(city)} number is: (\d+)"
        m = next((m for part in visible(prompt, self.head, self.tail) if (m := re.search(pattern, part))), None)
        return f"The special magic {city} number is {m.group(1)}." if m else "I could not find it."
