"""A golden run of every lwm-pack job: small inputs made here, every output file's SHA-256.

`build_all(root)` writes deterministic inputs under `root/in`, trains a tiny tokenizer, then runs
through the command line (`lwmkit.pipelines.cli.main`, the interface users call, so the same
script runs against any layout of the package): the books job (twice: one global packing pass, and
windows with another loss and positions policy), the image job (a webdataset tar and a parquet of
image bytes, good and bad pairs, the tiny VQGAN with a fixed seed), the video job (generated clips,
one audio-only file, a duplicate row), the QA job with the extractive generator, the stages job
(`pack`) over the books job's documents, and the LWM export of the books and image outputs.

`digests(root)` returns `{relative path: sha256}` for every shard, index, metadata and failures
file and every manifest (manifests with `timestamps` removed: the only field that differs between
runs). Work stores, the job lock and input record (`.lwm-pack/`) and download or reply caches are left out: they are how a job resumes, not
what it makes. Every path handed to a job is relative to `root` (the caller's working directory),
so manifests and document records name the same files wherever `root` lies.

Regenerate the committed values (tests/pipelines/golden_outputs.json) on a layout known to be good:
    LWMKIT_WRITE_GOLDEN=1 python -m pytest tests/pipelines/test_golden_outputs.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .helpers import book, record, write_jsonl, write_jsonl_zst
from .helpers import write_parquet as write_text_parquet
from .image_inputs import bad_images, images, rgb, write_parquet, write_tar
from .video_inputs import write_audio_only, write_clip

VOCAB = 600
KEPT_SUFFIXES = (".json", ".jsonl", ".parquet")
SKIPPED_DIRS = (".work", ".lwm-pack", "video-cache", "generator-cache")


def _tokenizer(path: Path) -> str:
    from lwmkit.tokenizers import train_bpe

    lines = [line for seed in range(12) for line in book(seed, 24).split("\n") if line]
    path.write_bytes(train_bpe(lines, vocab_size=VOCAB, seed=0))
    return str(path)


def _book_inputs(d: Path) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    texts = [book(200 + i, 3 + 5 * i) for i in range(6)]
    write_jsonl_zst(d / "a.jsonl.zst", [record(t, {"title": f"book {i}"}) for i, t in enumerate(texts[:4])]
                    + [b'{"text": "cut', record(texts[0], {"title": "again"})])
    write_jsonl(d / "b.jsonl", [record(texts[4]), b"[1, 2]", record("  "), record(texts[5], {"n": 5})])
    (d / "c.txt").write_text(book(300, 30), encoding="utf-8")
    write_text_parquet(d / "d.parquet", [book(301, 9), None, book(302, 2)], [None, None, "{}"])
    return [str(d / "*.jsonl*"), str(d / "c.txt"), str(d / "d.parquet")]


def _qa_inputs(d: Path) -> str:
    d.mkdir(parents=True, exist_ok=True)
    lines = [record(book(400 + i, 40), {"title": f"long {i}"}) for i in range(2)]
    write_jsonl(d / "books.jsonl", lines + [record("A tiny story. It ends at once.")])
    return str(d / "books.jsonl")


def _image_inputs(d: Path) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    members, captions = [], {}
    for i, (kind, data) in enumerate(sorted(images().items()), start=1):
        captions[kind] = f"Picture {i}: a {kind} image"
        ext = "jpg" if kind in ("rgb_jpeg", "cmyk", "exif_rotated") else "gif" if kind == "animated" else "png"
        ext = "webp" if kind == "webp" else ext
        members += [(f"s/{i:04d}.{ext}", data), (f"s/{i:04d}.txt", captions[kind].encode())]
    for name, (data, _) in sorted(bad_images().items()):
        members += [(f"s/{name}.png", data), (f"s/{name}.txt", f"a {name} image".encode())]
    members += [("s/nocap.png", rgb(seed=20)), ("s/dup.png", images()["rgb_png"]),
                ("s/dup.txt", captions["rgb_png"].encode())]
    write_tar(d / "a.tar", members)
    write_parquet(d / "b.parquet", {
        "image": [rgb(280, 300, seed=s) for s in (30, 31, 32)] + [b"not an image"],
        "caption": ["a wide pattern", "a tall pattern", None, "broken bytes"],
    })
    return [str(d / "a.tar"), str(d / "b.parquet")]


def _video_inputs(d: Path) -> str:
    d.mkdir(parents=True, exist_ok=True)
    write_clip(d / "a.mp4", n=12)
    write_clip(d / "b.mp4", n=9, w=72, h=40)
    write_audio_only(d / "sound.m4a")
    chat = [{"from": "human", "value": "<video>\nWhat moves?"}, {"from": "gpt", "value": "The grey halves."}]
    rows = [
        {"path": "a.mp4", "caption": "A striped clip"},
        {"path": "b.mp4", "conversations": chat},
        {"path": "a.mp4", "caption": "A striped clip"},
        {"path": "sound.m4a", "caption": "Only sound"},
        {"path": "a.mp4", "caption": "The first second", "start": 0.0, "end": 0.6},
    ]
    (d / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(d / "videos.jsonl")


def _run(*argv: str) -> None:
    from lwmkit.pipelines.cli import main

    rc = main([*argv, "--quiet"] if argv[0] not in ("export",) else list(argv))
    if rc != 0:
        raise RuntimeError(f"lwm-pack {' '.join(argv)} exited {rc}")


def build_all(root: Path) -> None:
    """Makes the inputs and runs every job under `root`, which must be the working directory."""
    root = Path(root)
    if Path.cwd().resolve() != root.resolve():
        raise ValueError(f"build_all: run it from {root} (paths handed to the jobs are relative)")
    rel = Path(".")
    tok = _tokenizer(rel / "tokenizer.model")
    books = _book_inputs(rel / "in" / "books")
    inputs = [a for p in books for a in ("--input", p)]
    _run("books", *inputs, "--tokenizer", tok, "--seq-len", "512,2048", "--output", "out/books",
         "--shard-tokens", "4000")
    _run("books", *inputs, "--tokenizer", tok, "--seq-len", "700", "--output", "out/books-window",
         "--pack-window", "3", "--top-up-below", "0.9", "--loss-policy", "lwm_balance+per_document",
         "--piece-positions", "continue", "--long-document-policy", "truncate", "--pack-seed", "4")
    _run("pack", "--documents", "out/books/documents", "--schedule", "256,1024,4096",
         "--min-doc-tokens", "0,300,0", "--output", "out/stages", "--long-document-policy", "drop")
    image_inputs = [a for p in _image_inputs(rel / "in" / "images") for a in ("--input", p)]
    _run("images", *image_inputs, "--tokenizer", tok, "--vqgan-preset", "tiny", "--vqgan-seed", "7",
         "--seq-len", "300,1200", "--generation-fraction", "0.5", "--seed", "3", "--batch-size", "4",
         "--output", "out/images")
    # Decode workers are shared per settings for the whole process and resolve relative paths
    # against the folder they started in: settings of its own give this run workers started here.
    _run("videos", "--input", _video_inputs(rel / "in" / "videos"), "--tokenizer", tok, "--vqgan-preset", "tiny",
         "--vqgan-seed", "7", "--num-frames", "3", "--chunk-frames", "2", "--seq-len", "2000,800",
         "--seed", "5", "--videos-per-worker", "29", "--output", "out/videos")
    _run("qa", "--input", _qa_inputs(rel / "in" / "qa"), "--tokenizer", tok, "--preset", "tiny",
         "--generator", "extractive", "--seed", "2", "--output", "out/qa")
    _run("export", "out/books", "--output", "out/export/books.jsonl")
    _run("export", "out/images", "--output", "out/export/images.jsonl")


def _canonical(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name == "manifest.json":
        manifest = json.loads(data)
        manifest.pop("timestamps", None)
        return json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return data


def digests(root: Path) -> dict[str, str]:
    """SHA-256 of every output file under `root/out` (see the module docstring), by relative path."""
    out = {}
    base = Path(root) / "out"
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if not path.is_file() or any(part in SKIPPED_DIRS for part in rel.parts):
            continue
        if ".array_record-" not in path.name and not path.name.endswith(KEPT_SUFFIXES):
            continue
        out[rel.as_posix()] = hashlib.sha256(_canonical(path)).hexdigest()
    return out


def golden_file() -> Path:
    return Path(__file__).with_name("golden_outputs.json")


def load_golden() -> dict[str, str]:
    return json.loads(golden_file().read_text(encoding="utf-8"))


def write_golden(values: dict[str, str]) -> None:
    golden_file().write_text(json.dumps(values, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def writing_requested() -> bool:
    return os.environ.get("LWMKIT_WRITE_GOLDEN") == "1"
