"""The video-QA job's own stages (decode, encode, gather and example are the video job's).

    ReadVideo   a video file -> {file, line 0, key, doc_id, video_path}
    FindClips   -> + clips [{clip_id, start, end, thumbs}] and duration (`clips.find_clips`)
    Caption     -> + each clip's generation result (captioner through `qa.calls.generate_all`)
    validate_captions  a `Dropped` row per clip left without caption (reason, raw replies); the
                video goes on with its captioned clips (`no_captions` when none is left)
    AskQuestions -> + turns [[question, answer]], meta (timeline, evidence, depth) and the frame
                count that fits the target length (`sampling`); `qa_failed` drops with the raw replies

Example, a 20 s video: 6 clips -> 6 captions -> 4 turns, each with the clips that support it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lwmkit.pipelines.engine.drops import Dropped, DropRecord
from lwmkit.pipelines.qa.cache import ReplyCache
from lwmkit.pipelines.qa.calls import generate_all, generate_pairs
from lwmkit.pipelines.video_qa.clips import ClipOptions, find_clips
from lwmkit.pipelines.video_qa.models import ClipItem, TimelineItem, clock
from lwmkit.pipelines.videos.stages import local_copy
from lwmkit.tokenizers.vision import TOKENS_PER_FRAME

DEPTH_BUCKETS = 10


def video_doc_id(path: str) -> int:
    digest = hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def read_video(path: str) -> Iterator[dict]:
    key = os.path.splitext(os.path.basename(path))[0]
    yield {"file": path, "line": 0, "key": key, "doc_id": video_doc_id(path), "video_path": path,
           "meta": json.dumps({"video": path})}


@dataclass(frozen=True)
class FindClips:
    options: ClipOptions

    def __call__(self, video: dict) -> Iterator[dict]:
        try:
            with local_copy(video["video_path"]) as path:
                found = find_clips(path, self.options)
        except Exception as e:  # PyAV / OpenCV errors: the file is not a decodable video
            raise DropRecord("corrupt_video", f"{type(e).__name__}: {str(e)[:300]}") from e
        clips = [{**c, "clip_id": f"{video['key']}-{i:05d}"} for i, c in enumerate(found["clips"])]
        yield {**video, "duration": found["duration"], "cuts": found["cuts"], "clips": clips}


@dataclass(frozen=True)
class Caption:
    captioner: Any
    cache_dir: str | None
    max_attempts: int

    def __call__(self, video: dict) -> Iterator[dict]:
        items = [ClipItem(c["clip_id"], c["start"], c["end"], tuple(c["thumbs"])) for c in video["clips"]]
        cache = ReplyCache(self.cache_dir) if self.cache_dir else None
        results = generate_all(self.captioner, items, cache, self.max_attempts)
        clips = [{k: v for k, v in c.items() if k != "thumbs"} for c in video["clips"]]
        out = []
        for c, r in zip(clips, results, strict=True):
            j = r.to_json()
            c["caption"] = r.pairs[0].answer if r.pairs else None
            out.append({**c, "result": {k: j[k] for k in j if k != "pairs"}})
        yield {**video, "clips": out}


def validate_captions(video: dict) -> Iterator[dict | Dropped]:
    for c in video["clips"]:
        r = c["result"]
        if r["reason"] is not None:
            detail = {"clip_id": c["clip_id"], "attempts": r["attempts"], "detail": r["detail"], "raw": r["raw"]}
            yield Dropped(r["reason"], json.dumps(detail, sort_keys=True), video["file"], video["line"])
    if not any(c["caption"] for c in video["clips"]):
        raise DropRecord("no_captions", f"none of {len(video['clips'])} clips got a caption")
    yield video


@dataclass(frozen=True)
class AskQuestions:
    """The QA step, and the frame count: frames fill what the turns leave of `seq_len`."""

    generator: Any
    cache_dir: str | None
    max_attempts: int
    tokenizer: Any
    seq_len: int
    max_frames: int

    def __call__(self, video: dict) -> Iterator[dict]:
        captioned = [(n, c) for n, c in enumerate(video["clips"]) if c["caption"]]
        item = TimelineItem(video["key"], video["duration"],
                            tuple((n, c["start"], c["end"], c["caption"]) for n, c in captioned))
        cache = ReplyCache(self.cache_dir) if self.cache_dir else None
        r = generate_pairs(self.generator, item, cache, self.max_attempts)
        if not r.pairs:
            detail = {"attempts": r.attempts, "detail": r.detail, "raw": r.raw}
            raise DropRecord(r.reason or "qa_failed", json.dumps(detail, sort_keys=True))
        turns = [[p.question, p.answer] for p in r.pairs]
        text_tokens = sum(len(self.tokenizer.encode(q + a)) + 24 for q, a in turns) + 32  # + template text
        frames = min(self.max_frames, (self.seq_len - text_tokens) // (TOKENS_PER_FRAME + 1))
        if frames < 1:
            raise DropRecord("too_long", f"the turns take ~{text_tokens} of seq_len {self.seq_len} tokens")
        by_number = dict(captioned)
        evidence = []
        for p in r.pairs:
            mids = [(by_number[k]["start"] + by_number[k]["end"]) / 2 for k in p.clips]
            evidence.append({"clips": [by_number[k]["clip_id"] for k in p.clips],
                             "depth": round(min(mids) / video["duration"], 4) if video["duration"] else 0.0})
        meta = {**json.loads(video["meta"]), "duration": video["duration"], "cuts": video["cuts"],
                "timeline": [[c["clip_id"], c["start"], c["end"], c["caption"]] for c in video["clips"]],
                "evidence": evidence}
        stats = {k: v for k, v in r.to_json().items() if k != "pairs"}
        yield {**video, "turns": turns, "meta": json.dumps(meta, sort_keys=True), "qa_result": stats,
               "sampling": {"mode": "count", "num_frames": int(frames), "fps": 1.0, "max_frames": int(frames)},
               "caption": None}


def video_stats(video: dict) -> dict[str, Any]:
    """One video's accounting for the manifest (a `qa.stages.QAStatsFn` input)."""
    s: dict[str, float] = {"videos": 1, "clips": len(video["clips"]), "seconds": video["duration"],
                           "captioned": sum(1 for c in video["clips"] if c["caption"]), "questions": len(video["turns"])}
    for step, results in (("caption", [c["result"] for c in video["clips"]]), ("qa", [video["qa_result"]])):
        for r in results:
            for k in ("calls", "cache_hits", "requests", "attempts"):
                s[f"{step}.{k}"] = s.get(f"{step}.{k}", 0) + r[k]
            for k, v in r["usage"].items():
                s[f"{step}.usage.{k}"] = s.get(f"{step}.usage.{k}", 0) + v
    hist: dict[str, int] = {}
    for e in json.loads(video["meta"])["evidence"]:
        b = min(DEPTH_BUCKETS - 1, int(e["depth"] * DEPTH_BUCKETS))
        label = f"{b * 10:02d}-{(b + 1) * 10}%"
        hist[label] = hist.get(label, 0) + 1
    return {"sum": s, "min": {}, "max": {}, "hist": {"evidence_depth": hist}}


def summary(stats: dict[str, Any]) -> dict[str, Any]:
    s = stats["sum"]
    out = {k: (round(v, 3) if isinstance(v, float) else int(v)) for k, v in sorted(s.items())}
    return {"totals": out, "evidence_depth": dict(sorted(stats["hist"].get("evidence_depth", {}).items())),
            "depth_measure": "start of the earliest supporting clip's middle, as a share of the video's length"}


__all__ = ["clock"]
