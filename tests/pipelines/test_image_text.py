"""The image-text job end to end on all four input kinds, with good and bad pairs of every sort.

One module-scoped run (`built`) reads a webdataset tar, a parquet of image bytes, a folder with
captions.jsonl (plus ../shared/data/images when present) and a parquet of URLs served by a local
HTTP server (some 404, one hanging past the timeout), with the tiny random VQGAN on the in-memory
DirectRunner. The checks read the shards back and rebuild every example independently.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from lwmkit.packing import ShardDataSource, check_packed
from lwmkit.pipelines.engine.normalize import normalize_text
from lwmkit.pipelines.examples.vision_text import choose_kind
from lwmkit.pipelines.images.download import DownloadOptions
from lwmkit.pipelines.images.job import CHAIN, ImagesOptions, NoValidPairsError, run_images
from lwmkit.pipelines.images.sources import SourceOptions
from lwmkit.tokenizers import SentencePieceTokenizer
from lwmkit.tokenizers.vision import EOV_ID, ImageOptions, load_image, vision_field, vision_runs

from .helpers import SHARED_DATA, assert_same_outputs, build_job, checked_failures, documents_by_source, unset_proxies, vqgan_job_fields
from .image_inputs import bad_images, images, rgb, serve, write_captions, write_parquet, write_tar

SEQ_LENS = (2048, 320)
SEED = 3
FRACTION = 0.5
MAX_PIXELS = 1_000_000
REAL = SHARED_DATA / "images"
EXT = {"rgb_jpeg": "jpg", "cmyk": "jpg", "exif_rotated": "jpg", "animated": "gif", "webp": "webp"}
LONG_CAPTION = " ".join(["A long caption about the striped picture and its many colours"] * 6)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    unset_proxies(monkeypatch)


@dataclass
class Corpus:
    """Inputs and what the job must make of them: good pairs by (file, line), failures by row."""

    dir: Path
    inputs: list[str] = field(default_factory=list)
    good: dict[tuple[str, int], tuple[str, bytes, str]] = field(default_factory=dict)  # caption, image, key
    failures: list[tuple[str, str, int, str]] = field(default_factory=list)

    def path(self, name: str) -> str:
        return str(self.dir / name)


def make_corpus(directory: Path, server) -> Corpus:
    c = Corpus(directory)
    directory.mkdir(parents=True, exist_ok=True)

    # 1. a webdataset tar
    tar, members = c.path("a.tar"), []
    for i, (kind, data) in enumerate(images().items(), start=1):
        caption = LONG_CAPTION if kind == "rgb_png" else f"Picture {i}: a {kind} image of stripes"
        members += [(f"s/{i:04d}.{EXT.get(kind, 'png')}", data), (f"s/{i:04d}.txt", caption.encode())]
        c.good[(tar, i)] = (caption, data, f"s/{i:04d}")
    line = len(members) // 2
    for name, (data, reason) in bad_images().items():
        line += 1
        members += [(f"s/{name}.png", data), (f"s/{name}.txt", f"a {name} image".encode())]
        c.failures.append(("decode", tar, line, reason))
    members += [(f"s/{line + 1:04d}.png", rgb(seed=20))]
    c.failures.append(("caption", tar, line + 1, "missing_caption"))
    members += [(f"s/{line + 2:04d}.png", rgb(seed=21)), (f"s/{line + 2:04d}.txt", b"  \n\t ")]
    c.failures.append(("caption", tar, line + 2, "empty_caption"))
    members += [("../evil.png", rgb(seed=22))]
    c.failures.append(("read", tar, line + 3, "unsafe_path"))
    members += [(f"s/{line + 4:04d}.txt", b"a caption without its image")]
    c.failures.append(("read", tar, line + 4, "missing_image"))
    first_caption, first_image, _ = c.good[(tar, 1)]
    members += [(f"s/{line + 5:04d}.jpg", first_image), (f"s/{line + 5:04d}.txt", first_caption.encode())]
    c.failures.append(("dedup", tar, line + 5, "duplicate"))
    c.inputs.append(write_tar(tar, members))

    # 2. parquet with image bytes
    pq = c.path("b.parquet")
    p1 = rgb(seed=30, fmt="JPEG")
    write_parquet(pq, {
        "jpg": [p1, first_image, None, rgb(seed=31)],
        "caption": ["parquet one", first_caption, "no image", None],
        "key": ["p1", "p2", "p3", "p4"],
    })
    c.good[(pq, 1)] = ("parquet one", p1, "p1")
    c.failures += [
        ("dedup", pq, 2, "duplicate"), ("read", pq, 3, "missing_image"), ("caption", pq, 4, "missing_caption"),
    ]
    c.inputs.append(pq)

    # 3. a folder with captions.jsonl (given as the folder)
    folder = directory / "folder"
    (folder / "sub").mkdir(parents=True)
    x, y = rgb(seed=40), rgb(seed=41, fmt="WEBP")
    (folder / "x.png").write_bytes(x)
    (folder / "sub" / "y.webp").write_bytes(y)
    (directory / "escape.png").write_bytes(rgb(seed=42))
    jsonl = write_captions(folder, [
        {"file": "x.png", "caption": "folder x", "license": "CC0"},
        {"file": "../escape.png", "caption": "escape"},
        {"file": "missing.png", "caption": "gone"},
        {"file": "sub/y.webp", "caption": " folder\r\ny "},  # normalized and stripped: "folder\ny"
    ])
    c.good[(jsonl, 1)] = ("folder x", x, "x.png")
    c.good[(jsonl, 4)] = ("folder\ny", y, "sub/y.webp")
    c.failures += [("read", jsonl, 2, "unsafe_path"), ("read", jsonl, 3, "missing_file")]
    c.inputs.append(str(folder))

    # 4. parquet of URLs, fetched from the local server
    urls = c.path("d.parquet")
    write_parquet(urls, {
        "url": [server.url("/img/u1.png"), server.url("/img/nothing.png"), server.url("/slow"),
                (directory / "folder" / "x.png").as_uri(), server.url("/img/u2.jpg")],
        "caption": ["url one", "url 404", "url slow", "a local file", "url two"],
    })
    c.good[(urls, 1)] = ("url one", server.handler.files["u1.png"], "d.parquet:1")
    c.good[(urls, 5)] = ("url two", server.handler.files["u2.jpg"], "d.parquet:5")
    c.failures += [("download", urls, 2, "http_404"), ("download", urls, 3, "timeout"),
                   ("download", urls, 4, "unsupported_scheme")]
    c.inputs.append(urls)

    # 5. the real sample images, when present
    if (REAL / "captions.jsonl").exists():
        rows = [json.loads(r) for r in (REAL / "captions.jsonl").read_text().splitlines() if r.strip()]
        for i, r in enumerate(rows, start=1):
            c.good[(str(REAL / "captions.jsonl"), i)] = (r["caption"], (REAL / r["file"]).read_bytes(), r["file"])
        c.inputs.append(str(REAL))
    return c


def options(corpus: Corpus, output, tokenizer: str, **kw) -> ImagesOptions:
    defaults = dict(
        **vqgan_job_fields(corpus.inputs, output, tokenizer, SEQ_LENS, FRACTION, SEED),
        images=ImageOptions(max_pixels=MAX_PIXELS),
        download=DownloadOptions(timeout_s=0.5, total_timeout_s=60.0, retries=1, backoff_s=0.01, allowed_hosts=("127.0.0.1",)),
        sources=SourceOptions(),
        shard_tokens=4096,
    )
    defaults.update(kw)
    return ImagesOptions(**defaults)


SERVED = {"u1.png": rgb(seed=50), "u2.jpg": rgb(seed=51, fmt="JPEG"), "slow": rgb(seed=52)}


@pytest.fixture(scope="module")
def built(tmp_path_factory, bpe_model):
    with serve(SERVED) as server, pytest.MonkeyPatch.context() as mp:
        unset_proxies(mp)
        yield build_job(tmp_path_factory.mktemp("images"), server, make_corpus, options, run_images, bpe_model)


def test_failures_and_counts(built):
    corpus, _, manifest, out = built
    rows, packing = checked_failures(out, corpus.failures)
    # An example longer than a record is dropped from that record length, never cut from its image.
    docs = documents_by_source(out)
    too_long = sorted(
        (f"pack-{n}", *w, "frame_too_long" if d["meta"]["kind"] == "generation" else "tail_too_long")
        for w, d in docs.items() for n in SEQ_LENS if len(d["tokens"]) > n
    )
    assert too_long and packing == too_long
    assert manifest["documents"] == len(corpus.good)
    stages = manifest["stages"]
    assert set(stages) == set(CHAIN.stages)
    assert stages["read"]["seen"] == len(corpus.inputs)
    for stage in ("caption", "download", "dedup", "decode", "encode", "example"):
        assert stages[stage]["dropped"] == sum(f[0] == stage for f in corpus.failures), stage
    assert stages["example"]["kept"] == len(corpus.good)
    timeout = next(r for r in rows if r["reason"] == "timeout")
    assert "after 2 attempts" in timeout["detail"]  # one retry


def test_manifest_says_the_vqgan_is_random(built):
    _, _, manifest, out = built
    assert manifest["vqgan"]["random_init"] is True and manifest["vqgan"]["preset"] == "tiny"
    assert "RANDOMLY INITIALISED" in manifest["warnings"][0]
    packed = json.loads((out / "packed-2048" / "manifest.json").read_text())
    assert packed["vqgan"] == manifest["vqgan"] and packed["tokens"]["vision"] == 257 * manifest["documents"]
    documents = json.loads((out / "documents" / "manifest.json").read_text())
    assert documents["tokens"]["vision"] == 257 * manifest["documents"]


def test_every_example_rebuilt_independently(built, bpe_model):
    from lwmkit.tokenizers.vqgan import ImageTokenizer

    corpus, _, _, out = built
    tok = SentencePieceTokenizer.from_file(bpe_model)
    docs = documents_by_source(out)
    assert set(docs) == set(corpus.good)
    where = sorted(corpus.good)
    pixels = np.stack([load_image(corpus.good[w][1], ImageOptions(max_pixels=MAX_PIXELS)) for w in where])
    codes = ImageTokenizer.random("tiny", seed=0, batch_size=4).encode(pixels)  # [n, 16, 16]
    kinds = set()
    for w, c in zip(where, codes, strict=True):
        caption, _, key = corpus.good[w]
        doc = docs[w]
        kind = doc["meta"]["kind"]
        kinds.add(kind)
        assert kind == choose_kind(key, SEED, FRACTION) and doc["meta"]["key"] == key
        field, mask = vision_field(c, tok)
        cap = np.array(tok.encode(normalize_text(caption).strip()), np.int32)
        bos, eos = [tok.bos_id], [tok.eos_id]
        if kind == "understanding":
            tokens = np.concatenate([bos, field, cap, eos])
            weights = np.concatenate([np.zeros(1 + len(field)), np.ones(len(cap) + 1)])
            span = [1, 1 + len(field)]
        else:
            tokens = np.concatenate([bos, cap, field, eos])
            weights = np.concatenate([np.zeros(1 + len(cap)), np.ones(len(field) + 1)])  # LWM's [caption],vision
            span = [1 + len(cap), 1 + len(cap) + len(field)]
        np.testing.assert_array_equal(doc["tokens"], tokens, err_msg=str(w))
        if kind == "understanding":
            vision = np.concatenate([[False], mask, np.zeros(len(cap) + 1, bool)])
        else:
            vision = np.concatenate([[False], np.zeros(len(cap), bool), mask, [False]])
        np.testing.assert_array_equal(doc["vision_mask"], vision, err_msg=str(w))
        np.testing.assert_array_equal(doc["loss_weights"], weights.astype(np.float32), err_msg=str(w))
        assert doc["atomic_spans"].tolist() == span  # flat (start, end) pairs
        assert doc["vision_mask"].sum() == 257 and doc["tokens"][doc["vision_mask"]][-1] == EOV_ID
    assert kinds == {"understanding", "generation"}


def test_packed_records_never_cut_an_image(built):
    _, _, manifest, out = built
    docs = {d["doc_id"]: d for d in documents_by_source(out).values()}
    cuts = json.loads((out / "packed-320" / "manifest.json").read_text())["cuts"]
    # the long captions' examples are longer than 320 tokens: dropped there, not cut from their images
    assert cuts["documents_split"] == 0 and cuts["documents_dropped"] >= 1
    for seq_len in SEQ_LENS:
        src = ShardDataSource(str(out / f"packed-{seq_len}"))
        dropped = json.loads((out / f"packed-{seq_len}" / "manifest.json").read_text())["cuts"]["documents_dropped"]
        images_seen = 0
        for rec in (src[i] for i in range(len(src))):
            assert check_packed(rec, seq_len) == []
            start = 0
            segments = zip(rec["segment_doc_ids"], rec["segment_offsets"], rec["segment_lengths"], strict=True)
            for doc_id, offset, length in segments:
                d = docs[int(doc_id)]
                sl = slice(start, start + length)
                np.testing.assert_array_equal(rec["tokens"][sl], d["tokens"][offset : offset + length])
                np.testing.assert_array_equal(rec["loss_weights"][sl], d["loss_weights"][offset : offset + length])
                a, b = d["atomic_spans"].tolist()
                assert b <= offset or a >= offset + length or (offset <= a and b <= offset + length)
                start += length
            for a, b in vision_runs(rec["vision_mask"]):
                assert b - a == 257 and rec["tokens"][b - 1] == EOV_ID
                images_seen += 1
            assert not rec["segment_prefix_lengths"].any()
        assert images_seen == manifest["documents"] - dropped


def test_one_grain_batch(built):
    from lwmkit.packing.loader import make_loader

    _, _, _, out = built
    batch = next(make_loader(str(out / "packed-2048"), batch_size=2, shuffle=False, num_epochs=1))
    assert batch["tokens"].shape == (2, 2048) and batch["targets"].shape == (2, 2048)
    assert batch["vision_mask"].any() and batch["target_loss_weights"].sum() > 0
    assert batch["tokens"][batch["vision_mask"]].max() <= EOV_ID


def test_rerun_is_byte_identical_and_the_cli_matches(built, bpe_model, tmp_path):
    from lwmkit.pipelines.cli import main

    corpus, _, _, out = built
    again = tmp_path / "again"
    args = ["images", *sum((["--input", i] for i in corpus.inputs), []), "--tokenizer", bpe_model,
            "--output", str(again), "--vqgan-preset", "tiny", "--seq-len", ",".join(map(str, SEQ_LENS)),
            "--generation-fraction", str(FRACTION), "--seed", str(SEED), "--max-pixels", str(MAX_PIXELS),
            "--download-timeout", "60", "--download-read-timeout", "0.5", "--download-retries", "1",
            "--download-backoff", "0.01", "--allow-host", "127.0.0.1",
            "--batch-size", "4", "--shard-tokens", "4096", "--quiet"]
    assert main(args) == 0
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (out, again)]
    assert manifests[0]["options"] == manifests[1]["options"]
    assert_same_outputs(out, again, ("documents", "packed-2048", "packed-320"))


@pytest.mark.slow
def test_multi_processing_matches_in_memory(built, bpe_model, tmp_path):
    """Every DoFn pickles and holds no process-global state: worker processes write the same bytes."""
    corpus, _, _, out = built
    mp = tmp_path / "mp"
    with pytest.MonkeyPatch.context() as patch:
        unset_proxies(patch)
        manifest = run_images(options(corpus, mp, bpe_model, direct_running_mode="multi_processing", direct_num_workers=2))
    assert manifest["runner"] == "DirectRunner (multi_processing)"
    assert_same_outputs(out, mp, ("documents", "packed-2048", "packed-320"))


@pytest.mark.realdata
def test_real_images(built):
    corpus, _, _, out = built
    if not (REAL / "captions.jsonl").exists():
        pytest.skip(f"{REAL} is absent (real sample images)")
    docs = documents_by_source(out)
    real = [w for w in corpus.good if w[0] == str(REAL / "captions.jsonl")]
    assert len(real) == 12 and all(docs[w]["vision_mask"].sum() == 257 for w in real)
    licenses = {docs[w]["meta"]["license"] for w in real}
    assert all(licenses)


def test_no_valid_pairs(tmp_path, bpe_model):
    folder = tmp_path / "in"
    folder.mkdir()
    write_captions(folder, [{"file": "missing.png", "caption": "x"}, b"not json"])
    with pytest.raises(NoValidPairsError, match="read:missing_file x1"):
        run_images(ImagesOptions(inputs=(str(folder),), output=str(tmp_path / "out"), tokenizer=bpe_model,
                                 vqgan_preset="tiny", seq_lens=(2048,)))
    shutil.rmtree(tmp_path / "out")


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"inputs": ()}, "inputs"),
        ({"seq_lens": (1,)}, "seq_lens"),
        ({"vqgan_preset": "huge"}, "vqgan_preset"),
        ({"vqgan_dtype": "int8"}, "vqgan_dtype"),
        ({"generation_fraction": 1.5}, "generation_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"direct_running_mode": "multi_threading"}, "direct_running_mode"),
    ],
)
def test_options_are_validated(kw, field):
    base = dict(inputs=("x.tar",), output="out", tokenizer="t.model")
    with pytest.raises(ValueError, match=field):
        ImagesOptions(**{**base, **kw})


def test_missing_inputs_fail_early(tmp_path, bpe_model):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        run_images(ImagesOptions(inputs=(str(tmp_path / "*.tar"),), output=str(tmp_path / "o"), tokenizer=bpe_model))
    (tmp_path / "a.csv").write_text("url,caption\n")
    with pytest.raises(ValueError, match="unsupported image input"):
        run_images(ImagesOptions(inputs=(str(tmp_path / "a.csv"),), output=str(tmp_path / "o"), tokenizer=bpe_model))
