"""The video job's per-record stages (see `video_text` for the job).

Stage functions run in `stages.StageDoFn`, except decode, which is a DoFn of its own because one
video leaves it twice: its frames stream out one by one (to the VQGAN's RunInference, batched
across videos) while the video itself, without pixels, goes on to wait for its codes. Frames are
never gathered before the VQGAN, so a video of any length holds at most a few chunks of frames in
memory (`video_workers`).

Example, one video through decode -> encode -> gather -> example:
    {"key": "1056", "video_path": "cache/3f9c.mp4", "caption": "a red bus", "doc_id": 77, ...}
      -> main:   {..., "decode": {"frames": 8, "frame_indices": [0, 9, ...], "decoder": "decord", ...}}
         frames: ({"doc_id": 77, "pos": 0, "file": ..., "line": ...}, uint8 [256, 256, 3]) x 8   decode
      -> (77, (0, int16 [16, 16])) x 8                                   encode (RunInference, join_codes)
      -> {..., "codes": int32 [8, 16, 16]}                               gather (CoGroupByKey by doc_id)
      -> (77, {"tokens": b"...", "atomic_spans": [[1, 260], ...], "meta": '{"kind": ...}', ...})   example
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue
from lwmkit.pipelines.engine import progress as progress_lib
from lwmkit.pipelines.engine.drops import KeepFirst
from lwmkit.pipelines.engine.normalize import normalize_text
from lwmkit.pipelines.engine.outputs import is_local
from lwmkit.pipelines.engine.stages import (
    COUNTS,
    FAILURES,
    MAIN,
    Dropped,
    DropRecord,
    RuntimeState,
    StageList,
    failure_row,
    split_tagged,
)
from lwmkit.pipelines.engine.vqgan import VQGANOptions, encode_stage, token_dtype
from lwmkit.pipelines.images.stages import ExampleStage, check_caption
from lwmkit.pipelines.videos.examples import VideoExampleBuilder, video_kind
from lwmkit.pipelines.videos.frames import DecodeOptions
from lwmkit.pipelines.videos.index import VideoError
from lwmkit.pipelines.videos.workers import DEFAULT_TASK, shared_pool
from lwmkit.pipelines.writing.payload import example_payload

FRAMES = "frames"


def check_text(video: dict) -> Iterator[dict]:
    """Normalizes captions and turns like book text; drops videos with no usable text."""
    turns = video.get("turns")
    if not turns:
        yield from check_caption(video)
        return
    clean = [[normalize_text(q).strip(), normalize_text(a).strip()] for q, a in turns]
    for i, (q, a) in enumerate(clean):
        if not q or not a:
            raise DropRecord("empty_turn", f"turn {i + 1} has an empty {'question' if not q else 'answer'}")
    caption = video.get("caption")
    caption = normalize_text(caption).strip() if isinstance(caption, str) else None
    yield {**video, "turns": clean, "caption": caption}


def content_id(video: dict) -> int:
    """A stable 63-bit id of a row: BLAKE2b-8 of its video source, clip range and text."""
    source = video.get("url") or video.get("path")
    what = [source, video.get("start"), video.get("end"), video.get("caption"), video.get("turns")]
    digest = hashlib.blake2b(json.dumps(what, ensure_ascii=False).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# Exact dedup: of rows with the same video, clip and text, keep the first by (file, line, key).
keep_first = KeepFirst("video, clip and text", by_key=True, with_doc_id=True)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """`path` itself when local, else a temporary local copy (decoders need a file)."""
    if is_local(path):
        yield path
        return
    from apache_beam.io.filesystems import FileSystems

    fd, tmp = tempfile.mkstemp(prefix="lwmkit-video-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb") as out, FileSystems.open(path) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        yield tmp
    finally:
        os.remove(tmp)


def decode_job(video: dict, options: DecodeOptions) -> dict[str, Any]:
    """The decode workers' job for one downloaded video (`video_frames.decode_video`); a video's own
    `sampling` (the video-QA job fits each video's frame count to its length) replaces the options'."""
    clip = [None, None] if video.get("clip_cut") else [video.get("start"), video.get("end")]
    name = f"{video['file']}:{video['line']}"
    raw = options.to_json()
    if video.get("sampling"):
        raw["sampling"] = dict(video["sampling"])
    return {"path": video["video_path"], "name": name, "clip": clip, "options": raw, "cwd": os.getcwd()}


class DecodeVideos(RuntimeState, beam.DoFn):
    """The decode stage; see the module docstring.

    Outputs tagged records `(tag, value)` (`run_decode` splits them with `split_tagged`): MAIN
    (one summary per decoded video), FRAMES, FAILURES, and COUNTS for the stages 'decode'
    (videos) and 'frames' (frames sent on, including those of a video that failed part-way:
    `gather_codes` leaves those out).

    Args:
      options: sampling and worker settings.
      progress: the job's progress folder (`engine.progress`) for the launcher's live counts, or None.
      task, python_path: what the decode workers run (see `video_workers.DecoderPool`).
    """

    def __init__(self, options: DecodeOptions, progress: str | None = None, task: str = DEFAULT_TASK,
                 python_path: tuple[str, ...] = ()):
        self.options = options
        self.progress = progress
        self.task = task
        self.python_path = tuple(python_path)

    RUNTIME_ATTRS = ("_pool",)  # the process's decoder pool

    def setup(self):
        o = self.options
        self._pool = shared_pool(o.workers, o.videos_per_worker, o.max_worker_rss_mb, self.task, self.python_path)
        self._metric = {
            (s, k): beam.metrics.Metrics.counter("lwmkit", f"{s}.{k}")
            for s in ("decode", "frames") for k in ("seen", "kept", "dropped")
        }

    def start_bundle(self):
        self._counts = {"decode": [0, 0, 0], "frames": [0, 0, 0]}  # seen, kept, dropped

    def process(self, video: dict):
        before = {s: list(c) for s, c in self._counts.items()}
        yield from self._decode(video)
        if self.progress:  # this video's share of the bundle's counts
            for s, c in self._counts.items():
                progress_lib.count(self.progress, s, *(n - b for n, b in zip(c, before[s], strict=True)))
            progress_lib.flush(self.progress)

    def _decode(self, video: dict):
        counts = self._counts
        counts["decode"][0] += 1
        meta, sent = None, 0
        try:
            with local_copy(video["video_path"]) as path:
                job = {**decode_job(video, self.options), "path": path}
                for event in self._pool.stream(job, self.options.time_budget_s):
                    if event[0] == "meta":
                        meta = event[1]
                        continue
                    _, start, chunk = event
                    for j in range(len(chunk)):
                        key = {"file": video["file"], "line": video["line"], "doc_id": video["doc_id"],
                               "pos": start + j}
                        yield FRAMES, (key, chunk[j].copy())  # copies free the chunk
                    sent += len(chunk)
                    counts["frames"][0] += len(chunk)
                    counts["frames"][1] += len(chunk)
        except VideoError as e:
            yield self._drop(video, e.reason, e.detail)
            return
        except OSError as e:  # the work directory could not be read
            yield self._drop(video, "missing_file", f"{video['video_path']}: {e}")
            return
        if meta is None or sent != meta["frames"]:
            announced = meta and meta["frames"]
            yield self._drop(video, "decode_error", f"the decoder sent {sent} frames, announced {announced}")
            return
        counts["decode"][1] += 1
        yield MAIN, {**video, "decode": meta}

    def _drop(self, video: dict, reason: str, detail: str):
        self._counts["decode"][2] += 1
        return FAILURES, failure_row("decode", video["file"], video["line"], reason, detail)

    def finish_bundle(self):
        if self.progress:
            progress_lib.flush(self.progress, force=True)
        for stage, values in self._counts.items():
            for name, value in zip(("seen", "kept", "dropped"), values, strict=True):
                if value:
                    self._metric[(stage, name)].inc(value)
            if any(values):
                yield WindowedValue((COUNTS, (stage, tuple(values))), MIN_TIMESTAMP, [GlobalWindow()])


def run_decode(videos, options: DecodeOptions, progress: str | None, task: str = DEFAULT_TASK, python_path=()):
    """Applies `DecodeVideos`; returns (videos, frames, failures, counts) PCollections."""
    tagged = videos | "decode" >> beam.ParDo(DecodeVideos(options, progress, task, python_path))
    out = split_tagged(tagged, "decode", (MAIN, FRAMES, FAILURES, COUNTS))
    return out[MAIN], out[FRAMES], out[FAILURES], out[COUNTS]


def keyed_codes(frame: dict) -> tuple[int, tuple[int, np.ndarray]]:
    """`join_codes`' output -> (doc_id, (position, int16 [16, 16])) for the gather."""
    return frame["doc_id"], (frame["pos"], frame["codes"].astype(np.int16))


_ORPHANS = beam.metrics.Metrics.counter("lwmkit", "gather.orphan_frames")


def gather_codes(element: tuple[int, dict[str, Iterable]]) -> Iterator[dict | Dropped]:
    """(doc_id, {"video": [summary], "codes": [(position, codes), ...]}) -> the video with codes [F, 16, 16].

    Frames without a summary belong to a video that failed part-way through decoding (its failure
    row is decode's); they are counted in the metric `gather.orphan_frames` and left out.
    """
    _, groups = element
    videos, codes = list(groups["video"]), list(groups["codes"])
    if not videos:
        _ORPHANS.inc(len(codes))
        return
    video = videos[0]
    n = video["decode"]["frames"]
    got = dict(codes)
    if sorted(got) != list(range(n)):
        detail = f"{len(got)} of {n} frames came back from the VQGAN"
        yield Dropped("missing_frames", detail, video["file"], video["line"])
        return
    yield {**video, "codes": np.stack([got[i] for i in range(n)]).astype(np.int32)}  # [F, 16, 16]


class MakeVideoExample(ExampleStage):
    """The example stage: (doc_id, payload) as `writing.payload.doc_arrays` reads it."""

    builder: VideoExampleBuilder

    def __call__(self, video: dict) -> Iterator[tuple[int, dict]]:
        turns = video.get("turns")
        kind = video_kind(video["key"], bool(turns), self.seed, self.generation_fraction)
        ex = self.builder.build(kind, video["codes"], video.get("caption"), turns)
        d = video["decode"]
        meta = {
            **json.loads(video["meta"]),
            "kind": kind,
            "clip": [video.get("start"), video.get("end")],
            **{k: d[k] for k in ("frames", "frame_indices", "frame_times", "decoder", "source_frames", "duration",
                                 "width", "height", "rotation", "codec")},
        }
        if turns:
            meta["turns"] = len(turns)
        chars = len(video.get("caption") or "") if not turns else sum(len(q) + len(a) for q, a in turns)
        yield video["doc_id"], example_payload(
            video, chars, meta, ex.tokens, self.token_dtype, ex.vision_mask, ex.loss_weights, ex.atomic_spans, kind=kind
        )


def decode_to_examples(stage: StageList, videos, options: VQGANOptions, tokenizer, vqgan_sha256: str, seed: int,
                       generation_fraction: float, task: str = DEFAULT_TASK, python_path=()):
    """The stages decode -> [frames] -> encode -> gather -> example of a job that makes video examples
    (videos, video-QA), added to its `stage` list; `options` also carries `decode` and `templates`.

    Returns:
      The example stage's output, (doc_id, payload) pairs.
    """
    decoded, frames, failures, counts = run_decode(videos, options.decode, stage.progress, task, python_path)
    stage.add(failures, counts)
    encoded = encode_stage(stage, frames, options, vqgan_sha256)
    joined = {
        "video": decoded | "key videos" >> beam.Map(lambda v: (v["doc_id"], v)),
        "codes": encoded | "key codes" >> beam.Map(keyed_codes),
    } | "join codes" >> beam.CoGroupByKey()
    videos = stage(joined, "gather", gather_codes)
    builder = VideoExampleBuilder(tokenizer, options.templates)
    return stage(videos, "example",
                 MakeVideoExample(builder, seed, generation_fraction, token_dtype(tokenizer.vocab_size)))
