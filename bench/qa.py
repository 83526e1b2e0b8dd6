"""Benchmark: the QA generator's OpenAI-compatible client against a server with fixed latency.

A local chat-completions server (its own process, so client and server do not share a GIL or a
CPU count) answers every request after exactly `--latency-ms`. The client (`ChatQAGenerator` run
by `generate_all`: request, retries, reply parsing and validation) sends `--per-slot` requests
per concurrency slot at each concurrency C. The most any client can do is C / latency requests per
second; the table shows what was achieved against that limit, with wall time and CPU-seconds of
the client process and of the server process. A last row adds the reply cache (cold: every reply
is written as a JSON file), and one more reads everything back from it (warm: zero calls).

Run (the command recorded in docs/benchmarks.md):
    python bench/qa.py --latency-ms 50 --concurrency 1,8,32
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time

import numpy as np

REPLY = json.dumps([{"question": "What did Ada find?", "answer": "the silver key"}])


def _serve(latency_s: float, conn) -> None:
    """The server process: answers every POST after latency_s; reports its CPU time when told to stop."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = json.dumps(
        {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52},
        }
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(latency_s)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    conn.send(httpd.server_address[1])
    while True:
        msg = conn.recv()
        if msg == "cpu":
            conn.send(time.process_time())
        elif msg == "stop":
            httpd.shutdown()
            return


def _run(port: int, conn, concurrency: int, n: int, cache_dir: str | None) -> dict:
    from lwmkit.pipelines.qa.cache import ReplyCache
    from lwmkit.pipelines.qa.calls import generate_all
    from lwmkit.pipelines.qa.chunks import Chunk
    from lwmkit.pipelines.qa.client import ClientOptions
    from lwmkit.pipelines.qa.generators import ChatGeneratorOptions, ChatQAGenerator

    chunks = []
    for i in range(n):
        text = f"Ada found the silver key number {i} near the harbour, and Basil watched the quiet lighthouse."
        chunks.append(Chunk(f"bench-{i:06d}", 1, i, 0, len(text), text, np.zeros(20, np.int32)))
    gen = ChatQAGenerator(
        ChatGeneratorOptions(
            client=ClientOptions(
                base_url=f"http://127.0.0.1:{port}/v1", model="bench", concurrency=concurrency, timeout_s=30
            )
        )
    )
    cache = ReplyCache(cache_dir) if cache_dir else None
    conn.send("cpu")
    server_cpu0 = conn.recv()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = generate_all(gen, chunks, cache, max_attempts=1)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    conn.send("cpu")
    server_cpu = conn.recv() - server_cpu0
    bad = [r for r in results if r.reason is not None]
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed, e.g. {bad[0].reason}: {bad[0].detail}")
    return {
        "wall": wall,
        "cpu": cpu,
        "server_cpu": server_cpu,
        "calls": sum(r.calls for r in results),
        "hits": sum(r.cache_hits for r in results),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrency limits")
    ap.add_argument("--per-slot", type=int, default=25, help="requests per concurrency slot (n = C * per_slot)")
    args = ap.parse_args()
    latency = args.latency_ms / 1000
    levels = [int(x) for x in args.concurrency.split(",") if x]

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(latency, child), daemon=True)
    server.start()
    port = parent.recv()
    rows = []
    try:
        for c in levels:
            rows.append((f"C={c}, no cache", c, c * args.per_slot, _run(port, parent, c, c * args.per_slot, None)))
        c = levels[-1]
        n = c * args.per_slot
        with tempfile.TemporaryDirectory(prefix="lwmkit-bench-qa-") as d:
            rows.append((f"C={c}, cache cold", c, n, _run(port, parent, c, n, d)))
            rows.append((f"C={c}, cache warm", c, n, _run(port, parent, c, n, d)))
    finally:
        parent.send("stop")
        server.join(5)

    print(f"latency {args.latency_ms:g} ms per request; limit = C / latency\n")
    print("| run | requests | calls | cache hits | wall s | requests/s | limit/s | % of limit "
          "| client CPU s | server CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, c, n, r in rows:
        rate, limit = n / r["wall"], c / latency
        pct = f"{100 * rate / limit:.1f}%" if r["calls"] else "n/a (no calls)"
        print(
            f"| {name} | {n} | {r['calls']} | {r['hits']} | {r['wall']:.2f} | {rate:.1f} | {limit:.1f} | {pct} "
            f"| {r['cpu']:.2f} | {r['server_cpu']:.2f} |"
        )


if __name__ == "__main__":
    main()
