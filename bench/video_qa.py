"""Benchmark: the video-QA job against its parts on 10, 30 and 60-minute generated videos, side by side.

Videos: H.264 at --width x --height and --fps (small, so that generating an hour is cheap), a shot
every 7 s on average (`tools.sample_videos.write_cut_video`). Rows, each in a fresh process so that
its peak RSS is its own:
  decode          PyAV decodes every frame to RGB (the physical floor of one pass)
  decode+scenes   `video_qa.clips.find_clips`: PySceneDetect's content detector and the thumbnail tap
  whole job       `lwm-pack video-qa` (in_memory DirectRunner, tiny random VQGAN) against a local
                  OpenAI-compatible server that answers at once; its example takes --sample-fps frames per
                  second of the whole video (1 fps: 3,600 frames of an hour, all through the decode worker
                  and the VQGAN), with --seq-len sized to fit them
Columns: frames/s of wall time (source frames), CPU-ms per source frame (the process and its decode
workers, which are stopped and reaped before the clock is read), peak RSS of the main process and of
the decode worker processes: each process's own `VmHWM` (/proc/<pid>/status), the largest over the
workers. Not `ru_maxrss`: Linux carries it across execve, so a child (and RUSAGE_CHILDREN) reports
at least its parent's resident memory at the moment it was started. Flat memory means the peaks at
60 minutes within 20% of those at 10.

Run (the command recorded in docs/benchmarks.md):
    python bench/video_qa.py --minutes 10,30,60 --fps 5 --width 64 --height 48
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _worker_peaks() -> list[float]:
    """Own peak RSS of every decode worker of this process's pools; then stops (reaps) them."""
    from lwmkit.pipelines.videos import workers

    peaks = []
    for pool in list(workers._POOLS.values()):
        if pool.last_stats:
            peaks.append(pool.last_stats["peak_rss_mb"])  # the worker's VmHWM when its last video ended
        peaks += [p for w in pool._idle if (p := workers.process_peak_rss_mb(w.process.pid)) is not None]
    workers.close_shared_pools()
    return peaks


def _decode(path: str) -> int:
    import av

    n = 0
    with av.open(path) as c:
        for frame in c.decode(video=0):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def _scenes(path: str) -> int:
    from lwmkit.pipelines.video_qa.clips import ClipOptions, find_clips

    found = find_clips(path, ClipOptions())
    return len(found["clips"])


def _job(path: str, work: str, max_frames: int) -> int:
    from lwmkit.tokenizers.vision import TOKENS_PER_FRAME

    sys.path.insert(0, ROOT)
    from lwmkit.pipelines.qa.client import ClientOptions
    from lwmkit.pipelines.video_qa.job import VideoQAOptions, run_video_qa
    from lwmkit.pipelines.video_qa.models import ChatCaptionerOptions, ChatQAOptions

    from tests.pipelines.vqa_server import VideoQAServer

    tok = os.path.join(work, "tokenizer.model")
    if not os.path.exists(tok):
        from lwmkit.pipelines.tools.sample_corpus import sample_training_lines, write_sample_corpus
        from lwmkit.tokenizers.text import train_bpe

        files = write_sample_corpus(os.path.join(work, "corpus"), books=4, seed=0)
        with open(tok, "wb") as f:
            f.write(train_bpe(sample_training_lines(files), vocab_size=1000, seed=0))
    seq_len = max(32768, max_frames * (TOKENS_PER_FRAME + 1) + 16384)  # the frames and the turns fit
    with VideoQAServer() as server:
        client = ClientOptions(base_url=server.url, model="instant", retries=2, backoff_s=0.0, concurrency=8)
        m = run_video_qa(VideoQAOptions(
            inputs=(path,), output=os.path.join(work, f"out-{os.path.basename(path)}"), tokenizer=tok,
            vqgan_preset="tiny", seq_lens=(seq_len,), max_frames=max_frames, captioner=ChatCaptionerOptions(client),
            questions=ChatQAOptions(client), direct_running_mode="in_memory", force=True, batch_size=16))
    return m["stages"]["encode"]["kept"]  # frames in the example, all through the decode worker and the VQGAN


def one(row: str, path: str, work: str, max_frames: int) -> dict:
    """Runs one row in this process; returns its measurements."""
    w0, c0 = time.perf_counter(), _cpu()
    out = {"decode": lambda: _decode(path), "scenes": lambda: _scenes(path),
           "job": lambda: _job(path, work, max_frames)}[row]()
    wall = time.perf_counter() - w0
    workers = _worker_peaks() if row == "job" else []
    cpu = _cpu() - c0
    from lwmkit.pipelines.videos.workers import process_peak_rss_mb

    return {"wall": wall, "cpu": cpu, "out": out, "main_mb": process_peak_rss_mb(),
            "worker_mb": max(workers, default=None), "workers": len(workers)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", default="10,30,60")
    ap.add_argument("--fps", type=int, default=5)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--sample-fps", type=float, default=1.0,
                    help="frames per second of video in the whole job's example (default 1: the issue's rate)")
    ap.add_argument("--one", nargs=4, metavar=("ROW", "PATH", "WORK", "MAX_FRAMES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row, path, work, mf = args.one
        print(json.dumps(one(row, path, work, int(mf))))
        return
    work = tempfile.mkdtemp(prefix="lwmkit-bench-vqa-")
    try:
        _table(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _table(args, work: str) -> None:
    import numpy as np
    from lwmkit.pipelines.tools.sample_videos import write_cut_video

    print("| video | row | frames | sampled | wall s | frames/s | CPU-ms/frame | peak RSS main MiB "
          "| peak RSS decode workers MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for minutes in [int(m) for m in args.minutes.split(",")]:
        n = minutes * 60 * args.fps
        cuts = tuple(np.cumsum(np.random.default_rng(minutes).integers(3 * args.fps, 11 * args.fps, n)).tolist())
        path = write_cut_video(os.path.join(work, f"v{minutes}.mp4"), frames=n, cuts=tuple(c for c in cuts if c < n),
                               fps=args.fps, w=args.width, h=args.height, seed=minutes)
        sampled = max(1, round(minutes * 60 * args.sample_fps))
        for row, label in (("decode", "decode only (PyAV)"), ("scenes", "decode + scene detection"),
                           ("job", "whole job, instant server")):
            cmd = [sys.executable, __file__, "--one", row, path, work, str(sampled)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            worker = "-" if r["worker_mb"] is None else f"{r['worker_mb']:.0f}"
            took = r["out"] if row == "job" else n
            print(f"| {minutes} min | {label} | {n} | {took} | {r['wall']:.1f} | {n / r['wall']:.0f} | "
                  f"{1000 * r['cpu'] / n:.2f} | {r['main_mb']:.0f} | {worker} |", flush=True)


if __name__ == "__main__":
    main()
