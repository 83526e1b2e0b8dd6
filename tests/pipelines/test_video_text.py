"""The video-text job end to end: generated clips of every awkward kind, files and URLs, captions and chat.

One module-scoped run (`built`) reads a JSONL list of local clips (H.264 MP4, VP9 WebM, an odd size,
variable frame rate, rotated, with audio, plus ../shared/data/video/tree.avi when present) and bad
files (audio-only, truncated, no moov, garbage, one whose decoder crashes mid-video, missing), a
parquet of URLs served on 127.0.0.1 and downloaded with yt-dlp (404, a page without video, a flaky
server, a hanging one, a refused file:// URL) and a WebVid/InternVid-style CSV with a clip range.
The tiny random VQGAN runs on the in-memory DirectRunner. The checks read the shards back and
rebuild every example from the clips. A second run through the CLI samples by fps from the same
download cache and must download nothing again.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from lwmkit.packing import ShardDataSource, check_packed
from lwmkit.pipelines.videos.download import VideoDownloadOptions
from lwmkit.pipelines.videos.examples import VideoExampleBuilder, VideoTemplates, video_kind
from lwmkit.pipelines.videos.frames import DecodeOptions, decode_video
from lwmkit.pipelines.videos.index import FrameSampling
from lwmkit.pipelines.videos.job import CHAIN, NoValidVideosError, VideosOptions, run_videos
from lwmkit.pipelines.videos.sources import VideoSourceOptions
from lwmkit.tokenizers import SentencePieceTokenizer
from lwmkit.tokenizers.vision import EOF_ID, EOV_ID, frame_codes

from .helpers import SHARED_DATA, assert_same_outputs, build_job, checked_failures, documents_by_source, unset_proxies, vqgan_job_fields
from .video_inputs import (
    HERE,
    corner_frame,
    serve,
    truncate,
    write_audio_only,
    write_clip,
    write_vfr_clip,
)

TREE = SHARED_DATA / "video" / "tree.avi"
SEQ_LENS = (4096, 600)
SAMPLING = FrameSampling("count", num_frames=3)
CHUNK = 2
SEED, FRACTION = 5, 0.5
CHAT = [{"from": "human", "value": "<video>\nWhat is on screen?"}, {"from": "gpt", "value": "Two grey halves."},
        {"from": "human", "value": "Do they change?"}, {"from": "gpt", "value": "Yes, every frame."}]


@dataclass
class Corpus:
    dir: Path
    inputs: list[str] = field(default_factory=list)
    good: dict[tuple[str, int], dict] = field(default_factory=dict)  # (file, line) -> row with "clip"
    failures: list[tuple[str, str, int, str]] = field(default_factory=list)
    served: dict[str, bytes] = field(default_factory=dict)


def make_corpus(d: Path, server) -> Corpus:
    c = Corpus(d)
    d.mkdir(parents=True, exist_ok=True)
    clips = {
        "a.mp4": write_clip(d / "a.mp4", n=20),
        "b.webm": write_clip(d / "b.webm", n=15, w=65, h=37, codec="libvpx-vp9"),  # an odd size
        "vfr.mp4": write_vfr_clip(d / "vfr.mp4", [0, 40, 80, 300, 310, 320, 900, 1000, 1500, 1510]),
        "rot.mp4": write_clip(d / "rot.mp4", n=5, rotation=270, pattern=corner_frame),
        "av.mp4": write_clip(d / "av.mp4", n=20, audio=True),
        "crash.mp4": write_clip(d / "crash.mp4", n=12),
    }
    write_audio_only(d / "sound.m4a")
    truncate(write_clip(d / "long.webm", n=60, codec="libvpx-vp9"), d / "cut.webm", 0.5)
    truncate(clips["a.mp4"], d / "cut.mp4", 0.7)
    (d / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 300)

    lst = str(d / "list.jsonl")
    rows: list[tuple[dict, str | None, str]] = [  # row, failing stage (None: good), reason
        ({"path": "a.mp4", "caption": "A striped clip"}, None, ""),
        ({"path": "b.webm", "conversations": CHAT}, None, ""),
        ({"path": "vfr.mp4", "qa": [{"q": "Is it even?", "a": "No, its frames come unevenly."}]}, None, ""),
        ({"path": "rot.mp4", "caption": "A turned clip"}, None, ""),
        ({"path": "av.mp4", "caption": "A clip with sound", "start": 0.5, "end": "00:00:01.5"}, None, ""),
        ({"path": "sound.m4a", "caption": "Only sound"}, "decode", "no_video_stream"),
        ({"path": "cut.webm", "caption": "A cut download"}, "decode", "truncated_video"),
        ({"path": "cut.mp4", "caption": "Cut before its index"}, "decode", "broken_container"),
        ({"path": "garbage.mp4", "caption": "Not a video"}, "decode", "broken_container"),
        ({"path": "crash.mp4", "caption": "Its decoder dies"}, "decode", "decoder_crashed"),
        ({"path": "missing.mp4", "caption": "Gone"}, "download", "missing_file"),
        ({"path": "a.mp4", "caption": "A striped clip"}, "dedup", "duplicate"),
        ({"path": "a.mp4", "caption": "  \t "}, "text", "empty_caption"),
        ({"path": "a.mp4"}, "text", "missing_caption"),
        ({"path": "../a.mp4", "caption": "Outside"}, "read", "unsafe_path"),
        ({"path": "a.mp4", "caption": "x", "start": "later"}, "read", "bad_time"),
        ({"path": "b.webm", "conversations": [CHAT[0], {"from": "gpt", "value": " "}]}, "text", "empty_turn"),
    ]
    if TREE.exists():
        rows.append(({"path": str(TREE), "caption": "A tree through a window"}, None, ""))
    for line, (row, stage, reason) in enumerate(rows, start=1):
        if stage is None:
            c.good[(lst, line)] = {**row, "clip": str(d / row["path"]) if "/" not in row["path"] else row["path"]}
        else:
            c.failures.append((stage, lst, line, reason))
    Path(lst).write_text("".join(json.dumps(r) + "\n" for r, _, _ in rows))
    c.inputs.append(lst)

    u2 = Path(write_clip(d / "u2.webm", n=8, codec="libvpx-vp9")).read_bytes()
    u3 = Path(write_clip(d / "u3.mp4", n=30, fps=10)).read_bytes()
    server.handler.files.update({"u2.webm": u2, "u3.mp4": u3})
    c.served = {"/flaky/1/u2.webm": u2, "/v/u3.mp4": u3}
    pq_path = str(d / "urls.parquet")
    urls = [(server.url("/v/none.mp4"), "Not there", "unavailable"), (server.url("/page"), "A page", "unsupported"),
            (server.url("/flaky/1/u2.webm"), "Flaky", None), (server.url("/slow/u2.webm"), "Slow", "timeout"),
            ((d / "a.mp4").as_uri(), "A file URL", "unsupported_scheme")]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": [u for u, _, _ in urls], "caption": [t for _, t, _ in urls]}), pq_path)
    for line, (url, caption, reason) in enumerate(urls, start=1):
        if reason is None:
            c.good[(pq_path, line)] = {"url": url, "caption": caption, "clip": str(d / url.rsplit("/", 1)[1])}
        else:
            c.failures.append(("download", pq_path, line, reason))
    c.inputs.append(pq_path)

    csv_path = d / "webvid.csv"
    csv_path.write_text(
        "videoid,contentUrl,name,Start_timestamp,End_timestamp\n"
        f'1001,{server.url("/v/u3.mp4")},"A WebVid caption, with a comma",00:00:00.5,00:00:01.9\n'
    )
    c.good[(str(csv_path), 2)] = {"caption": "A WebVid caption, with a comma", "start": 0.5, "end": 1.9,
                                  "clip": str(d / "u3.mp4")}
    c.inputs.append(str(csv_path))
    return c


def options(corpus: Corpus, output, tokenizer: str, **kw) -> VideosOptions:
    defaults = dict(
        **vqgan_job_fields(corpus.inputs, output, tokenizer, SEQ_LENS, FRACTION, SEED),
        sources=VideoSourceOptions(allow_local=True),
        download=VideoDownloadOptions(timeout_s=0.5, retries=1, backoff_s=0.01, allowed_hosts=("127.0.0.1",)),
        decode=DecodeOptions(SAMPLING, chunk_frames=CHUNK),
        shard_tokens=8192,
        decode_task="video_inputs:crash_task",
        decode_python_path=(HERE,),
    )
    return VideosOptions(**{**defaults, **kw})


@pytest.fixture(scope="module")
def server():
    with serve({}) as s:
        yield s


@pytest.fixture(scope="module")
def built(tmp_path_factory, bpe_model, server):
    with pytest.MonkeyPatch.context() as mp:
        unset_proxies(mp)
        yield build_job(tmp_path_factory.mktemp("videos"), server, make_corpus, options, run_videos, bpe_model)


def test_failures_and_counts(built):
    corpus, _, manifest, out = built
    rows, packing = checked_failures(out, corpus.failures)
    # chat examples longer than a record are dropped from it (a tail could lose the answers' evidence)
    too_long = sorted((f"pack-{n}", *w, "too_long") for w, d in documents_by_source(out).items() for n in SEQ_LENS
                      if d["meta"]["kind"] == "chat" and len(d["tokens"]) > n)
    assert too_long and packing == too_long
    assert "SIGABRT" in next(r["detail"] for r in rows if r["reason"] == "decoder_crashed")
    assert "after 2 attempts" in next(r["detail"] for r in rows if r["reason"] == "timeout")
    s = manifest["stages"]
    assert set(s) == set(CHAIN.stages) and manifest["documents"] == len(corpus.good)
    for stage in ("read", "text", "dedup", "download", "decode"):
        assert s[stage]["dropped"] == sum(f[0] == stage for f in corpus.failures), stage
    docs = documents_by_source(out)
    frames = sum(d["meta"]["frames"] for d in docs.values())
    assert s["encode"]["seen"] == s["frames"]["kept"] == frames + CHUNK  # the crashed video's first chunk
    assert s["gather"]["kept"] == s["example"]["kept"] == len(corpus.good)
    assert manifest["vqgan"]["random_init"] is True and "RANDOMLY INITIALISED" in manifest["warnings"][0]
    packed = json.loads((out / "packed-4096" / "manifest.json").read_text())
    assert packed["tokens"]["vision"] == 257 * frames


def test_frame_indices_and_kinds(built):
    corpus, _, _, out = built
    docs = documents_by_source(out)
    assert set(docs) == set(corpus.good)
    by_clip = {Path(w[0]).name + f":{w[1]}": d["meta"] for w, d in docs.items()}
    assert by_clip["list.jsonl:1"]["frame_indices"] == [0, 9, 19]  # linspace(0, 19, 3)
    assert by_clip["list.jsonl:3"]["frame_indices"] == [0, 4, 9]  # 10 VFR frames
    assert by_clip["list.jsonl:3"]["frame_times"] == [0.0, 0.31, 1.51]
    assert by_clip["list.jsonl:5"]["frame_indices"] == [5, 9, 14]  # frames starting in [0.5 s, 1.5 s)
    assert by_clip["list.jsonl:4"]["rotation"] == 270 and by_clip["list.jsonl:4"]["decoder"] == "pyav"
    assert by_clip["webvid.csv:2"]["frame_indices"] == [5, 11, 18] and by_clip["webvid.csv:2"]["clip"] == [0.5, 1.9]
    assert by_clip["urls.parquet:3"]["url"].endswith("/flaky/1/u2.webm")
    kinds = {m["kind"] for m in by_clip.values()}
    assert kinds == {"understanding", "generation", "chat"}
    assert by_clip["list.jsonl:2"]["kind"] == "chat" and by_clip["list.jsonl:2"]["turns"] == 2


def _turns(row: dict) -> list[list[str]] | None:
    if "conversations" in row:
        first = CHAT[0]["value"].replace("<video>", "").strip()
        return [[first, CHAT[1]["value"]], [CHAT[2]["value"], CHAT[3]["value"]]]
    if "qa" in row:
        return [[row["qa"][0]["q"], row["qa"][0]["a"]]]
    return None


def test_every_example_rebuilt(built, bpe_model):
    """Every document's layout, text, weights and spans from its row; the codes of a few from the clip."""
    from lwmkit.tokenizers.vqgan import ImageTokenizer

    corpus, opts, _, out = built
    tok = SentencePieceTokenizer.from_file(bpe_model)
    builder = VideoExampleBuilder(tok, VideoTemplates())
    docs = documents_by_source(out)
    codes = {w: np.stack(frame_codes(d["tokens"], d["vision_mask"])) for w, d in docs.items()}  # [F, 16, 16]
    for where, row in corpus.good.items():
        doc = docs[where]
        turns = _turns(row)
        kind = video_kind(doc["meta"]["key"], turns is not None, SEED, FRACTION)
        assert doc["meta"]["kind"] == kind, where
        ex = builder.build(kind, codes[where], row.get("caption"), turns)
        np.testing.assert_array_equal(doc["tokens"], ex.tokens, err_msg=str(where))
        np.testing.assert_array_equal(doc["vision_mask"], ex.vision_mask, err_msg=str(where))
        np.testing.assert_array_equal(doc["loss_weights"], ex.loss_weights, err_msg=str(where))
        assert doc["atomic_spans"].tolist() == [x for s in ex.atomic_spans for x in s]
        assert len(codes[where]) == doc["meta"]["frames"]
    vqgan = ImageTokenizer.random("tiny", seed=0, batch_size=4)
    lst = corpus.inputs[0]
    for where in [(lst, 2), (corpus.inputs[2], 2)]:  # odd-size VP9 chat; downloaded, with a clip range
        row = corpus.good[where]
        job = {"path": row["clip"], "clip": docs[where]["meta"]["clip"], "options": opts.decode.to_json()}
        pixels = np.concatenate([e[2] for e in decode_video(job) if e[0] == "frames"])
        np.testing.assert_array_equal(codes[where], vqgan.encode(pixels), err_msg=str(where))


def test_packing_cuts_videos_only_between_frames(built):
    _, _, manifest, out = built
    docs = {d["doc_id"]: d for d in documents_by_source(out).values()}
    cuts = json.loads((out / "packed-600" / "manifest.json").read_text())["cuts"]
    # every video is longer than 600 tokens: generation is split with its caption repeated,
    # understanding keeps its tail, chat is dropped
    assert cuts["documents_split"] + cuts["documents_tail_kept"] + cuts["documents_dropped"] == len(docs)
    assert cuts["documents_split"] == cuts["documents_condition_repeated"] >= 1 and cuts["documents_tail_kept"] >= 1
    for seq_len in SEQ_LENS:
        src = ShardDataSource(str(out / f"packed-{seq_len}"))
        for rec in (src[i] for i in range(len(src))):
            assert check_packed(rec, seq_len) == []
            start = 0
            for doc_id, offset, length, prefix in zip(rec["segment_doc_ids"], rec["segment_offsets"],
                                                      rec["segment_lengths"], rec["segment_prefix_lengths"], strict=True):
                d = docs[int(doc_id)]
                spans = d["atomic_spans"].reshape(-1, 2)
                bounds = {0, len(d["tokens"])} | set(spans[:, 0].tolist()) | set(spans[:, 1].tolist())
                assert offset in bounds and offset + length - prefix in bounds
                got = rec["tokens"][start : start + length]
                want = np.concatenate([d["tokens"][:prefix], d["tokens"][offset : offset + length - prefix]])
                np.testing.assert_array_equal(got, want)
                assert rec["loss_weights"][start : start + length].sum() > 0
                piece = slice(start, start + length)
                vision = np.flatnonzero(rec["vision_mask"][piece])
                if vision.size:  # whole frames only: every 257th vision token closes a frame
                    ends = rec["tokens"][piece][vision][256::257]
                    assert vision.size % 257 == 0 and set(ends.tolist()) <= {EOF_ID, EOV_ID}
                start += length


def test_one_grain_batch(built):
    from lwmkit.packing.loader import make_loader

    _, _, _, out = built
    batch = next(make_loader(str(out / "packed-4096"), batch_size=2, shuffle=False, num_epochs=1))
    assert batch["tokens"].shape == (2, 4096) and batch["vision_mask"].any()
    assert batch["target_loss_weights"].sum() > 0 and batch["tokens"][batch["vision_mask"]].max() <= EOV_ID


def test_cli_rerun_by_fps_downloads_nothing_again(built, bpe_model, server, tmp_path, capsys):
    from lwmkit.pipelines.cli import main

    corpus, opts, _, out = built
    hits = {route: server.hits[route] for route in corpus.served}
    again = tmp_path / "again"
    urls = corpus.inputs[1:]  # the parquet of URLs and the CSV
    args = ["videos", *sum((["--input", i] for i in urls), []), "--tokenizer", bpe_model,
            "--output", str(again), "--work-dir", opts.work_dir, "--vqgan-preset", "tiny", "--seq-len", "4096",
            "--sampling", "fps", "--fps", "2", "--chunk-frames", "8", "--allow-file-urls", "--allow-host", "127.0.0.1", "--download-timeout", "0.5",
            "--download-retries", "0", "--batch-size", "4", "--shard-tokens", "8192", "--quiet"]
    assert main(args) == 0
    assert {route: server.hits[route] for route in corpus.served} == hits  # every good URL came from the cache
    printed = capsys.readouterr().out
    docs = documents_by_source(again)
    by_clip = {Path(w[0]).name + f":{w[1]}": d["meta"] for w, d in docs.items()}
    assert f"{len(docs)} video examples" in printed
    assert by_clip["urls.parquet:5"]["frame_indices"] == [0, 5, 10, 15]  # the file:// URL, allowed this time
    assert by_clip["webvid.csv:2"]["frame_indices"] == [5, 10, 15]  # 2 fps from 0.5 s: 0.5 s, 1.0 s, 1.5 s
    assert by_clip["urls.parquet:3"]["frame_indices"] == [0, 5]  # 8 frames at 10 fps
    assert "unsupported_scheme" not in (again / "failures.jsonl").read_text()
    shutil.rmtree(again)


def test_no_valid_videos(tmp_path, bpe_model):
    lst = tmp_path / "l.jsonl"
    lst.write_text(json.dumps({"path": "none.mp4", "caption": "x"}) + "\n")
    with pytest.raises(NoValidVideosError, match="download:missing_file x1"):
        run_videos(VideosOptions(inputs=(str(lst),), output=str(tmp_path / "o"), tokenizer=bpe_model,
                                 vqgan_preset="tiny"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        run_videos(VideosOptions(inputs=(str(tmp_path / "*.csv"),), output=str(tmp_path / "o"), tokenizer=bpe_model))


@pytest.mark.parametrize(
    "kw,name",
    [({"inputs": ()}, "inputs"), ({"seq_lens": (1,)}, "seq_lens"), ({"vqgan_preset": "huge"}, "vqgan_preset"),
     ({"generation_fraction": 2.0}, "generation_fraction"), ({"batch_size": 0}, "batch_size")],
)
def test_options_are_validated(kw, name):
    with pytest.raises(ValueError, match=name):
        VideosOptions(**{**dict(inputs=("a.csv",), output="o", tokenizer="t.model"), **kw})


@pytest.mark.slow
def test_multi_processing_matches_in_memory(built, bpe_model, tmp_path):
    """Every DoFn of the video job pickles and holds no process-global state: worker processes
    write the same bytes as the in-memory runner."""
    corpus, _, _, out = built
    mp = tmp_path / "mp"
    with pytest.MonkeyPatch.context() as patch:
        unset_proxies(patch)
        manifest = run_videos(options(corpus, mp, bpe_model, direct_running_mode="multi_processing",
                                      direct_num_workers=2))
    assert manifest["runner"] == "DirectRunner (multi_processing)"
    assert_same_outputs(out, mp, ["documents", *(f"packed-{n}" for n in SEQ_LENS)])
