"""`lwm-pack inspect --render`: a record's vision frames decoded to PNGs with the dataset's own VQGAN."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from lwmkit.packing.assemble import Segment, assemble_packed
from lwmkit.packing.records import encode_document, encode_packed
from lwmkit.packing.shards import write_json_atomic
from lwmkit.pipelines.cli import main
from lwmkit.pipelines.tools.inspection import (
    InspectError,
    load_vqgan,
    recorded_vqgan,
    render_record,
)
from lwmkit.tokenizers.text import SentencePieceTokenizer
from lwmkit.tokenizers.vision import vision_field
from PIL import Image

from ..packing.helpers import write_dataset

vqgan = pytest.importorskip("lwmkit.tokenizers.vqgan", reason="the VQGAN module is not present")
SEED = 3


@pytest.fixture(scope="module")
def tok(tiny_tokenizer) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.from_file(tiny_tokenizer)


@pytest.fixture(scope="module")
def vq():
    return vqgan.ImageTokenizer.random("tiny", seed=SEED)


def codes(frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 8192, (frames, 16, 16)).astype(np.int32)


def document(tok, parts, doc: int) -> dict:
    """BOS, then ("text", str) / ("vision", codes) parts, then EOS."""
    tokens, vm = [np.array([tok.bos_id])], [np.array([False])]
    for kind, payload in parts:
        t, m = (np.array(tok.encode(payload)), None) if kind == "text" else vision_field(payload, tok)
        tokens.append(t)
        vm.append(np.zeros(len(t), bool) if m is None else m)
    tokens.append(np.array([tok.eos_id]))
    vm.append(np.array([False]))
    tokens, vm = np.concatenate(tokens).astype(np.int32), np.concatenate(vm)
    return {"doc_id": 7000 + doc, "source_file": "pairs.jsonl", "source_line": doc + 1, "tokens": tokens,
            "vision_mask": vm, "loss_weights": np.ones(len(tokens), np.float32)}


DOC_CODES = {0: [codes(1, 10)], 1: [codes(1, 11), codes(2, 12)]}


def build_job(root, tok, tiny_tokenizer, vqgan_entry) -> tuple[str, list[dict]]:
    """A job directory: documents/ (3 docs) and packed-2048/ (one record: doc 0 then doc 1), with a
    manifest recording the tokenizer and `vqgan_entry`."""
    docs = [
        document(tok, [("text", "A photo of the sea."), ("vision", DOC_CODES[0][0])], 0),
        document(tok, [("vision", DOC_CODES[1][0]), ("text", "then a clip:"), ("vision", DOC_CODES[1][1]),
                       ("text", "The end.")], 1),
        document(tok, [("text", "Text only.")], 2),
    ]
    job = os.path.join(root, "job")
    extra = {"tokenizer": {**tok.fingerprint(), "path": tiny_tokenizer}}
    for name, kind, blobs, seq_len in [
        ("documents", "document", [encode_document(**d) for d in docs], None),
        ("packed-2048", "packed", [encode_packed(assemble_packed(
            [Segment(d["doc_id"], 0, d["tokens"], d["vision_mask"], d["loss_weights"]) for d in docs[:2]], 2048
        ), 2048)], 2048),
    ]:
        path = os.path.join(job, name)
        os.makedirs(path)
        m = write_dataset(path, blobs, kind=kind, seq_len=seq_len, num_shards=1, documents=len(docs))
        total = sum(len(d["tokens"]) for d in (docs if kind == "document" else docs[:2]))
        write_json_atomic(os.path.join(path, "manifest.json"), {**m, **extra, "tokens": {"total": total}})
    write_json_atomic(os.path.join(job, "manifest.json"), {
        "format_version": 1, "kind": "job", "documents": len(docs), **extra, "vqgan": vqgan_entry,
        "datasets": {"documents": {}, "packed-2048": {}},
    })
    return job, docs


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_cli_renders_each_frame_with_the_rebuilt_random_vqgan(tmp_path, tok, vq, tiny_tokenizer, capsys):
    job, _ = build_job(tmp_path, tok, tiny_tokenizer, vq.fingerprint())
    out = tmp_path / "frames"
    assert main(["inspect", job, "--record", "0", "--render", str(out), "--no-checksums"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOMLY INITIALISED VQGAN" in printed and "seed 3" in printed
    assert "[vision: 257 tokens, 1 frames]" in printed and "[vision: 514 tokens, 2 frames]" in printed
    names = ["record0-segment1-vision1-frame1.png", "record0-segment2-vision1-frame1.png",
             "record0-segment2-vision2-frame1.png", "record0-segment2-vision2-frame2.png"]
    assert sorted(os.listdir(out)) == names
    for name in names:
        assert str(out / name) in printed.splitlines()
    expected = vq.decode(np.concatenate(DOC_CODES[0] + DOC_CODES[1]))  # the same frames, in token order
    for name, want in zip(names, expected, strict=True):
        np.testing.assert_array_equal(pixels(str(out / name)), want)


def test_render_a_document_record_with_a_given_tokenizer(tmp_path, tok, vq, tiny_tokenizer):
    job, _ = build_job(tmp_path, tok, tiny_tokenizer, vq.fingerprint())
    log = io.StringIO()
    paths = render_record(os.path.join(job, "documents"), 1, str(tmp_path / "f"), log, image_tokenizer=vq)
    assert [os.path.basename(p) for p in paths] == [
        "record1-segment1-vision1-frame1.png", "record1-segment1-vision2-frame1.png",
        "record1-segment1-vision2-frame2.png",
    ]
    np.testing.assert_array_equal(pixels(paths[2]), vq.decode(DOC_CODES[1][1][1:])[0])
    assert render_record(os.path.join(job, "documents"), 2, str(tmp_path / "g"), log, image_tokenizer=vq) == []
    assert "record 2 has no vision tokens" in log.getvalue() and not os.path.exists(tmp_path / "g")


def test_recorded_vqgan_comes_from_the_dataset_or_its_job(tmp_path, tok, vq, tiny_tokenizer):
    job, _ = build_job(tmp_path, tok, tiny_tokenizer, vq.fingerprint())
    assert recorded_vqgan(os.path.join(job, "documents"))["sha256"] == vq.fingerprint()["sha256"]


def test_load_vqgan_rebuilds_random_weights_and_checks_them(vq):
    log = io.StringIO()
    rebuilt = load_vqgan(vq.fingerprint(), None, log)
    assert rebuilt.fingerprint()["sha256"] == vq.fingerprint()["sha256"] and "RANDOMLY INITIALISED" in log.getvalue()
    with pytest.raises(InspectError, match="recorded"):
        load_vqgan({**vq.fingerprint(), "seed": SEED + 1}, None, io.StringIO())
    with pytest.raises(InspectError, match="records no VQGAN; pass --vqgan"):
        load_vqgan(None, None, io.StringIO())


def test_load_vqgan_from_a_recorded_path_or_an_override(tmp_path, vq):
    weights = str(tmp_path / "vq.safetensors")
    vq.save(weights)
    saved = {**vq.fingerprint(), "random_init": False, "source": "lwmkit:vq.safetensors"}
    log = io.StringIO()
    assert load_vqgan({**saved, "path": weights}, None, log).fingerprint()["sha256"] == saved["sha256"]
    assert "WARNING" not in log.getvalue()
    with pytest.raises(InspectError, match="not at a recorded path; pass --vqgan WEIGHTS"):
        load_vqgan(saved, None, io.StringIO())
    other = str(tmp_path / "other.safetensors")
    vqgan.ImageTokenizer.random("tiny", seed=SEED + 1).save(other)
    log = io.StringIO()
    assert load_vqgan(saved, other, log).seed == SEED + 1  # --vqgan wins, loudly
    assert "is not the VQGAN this dataset was tokenized with" in log.getvalue()


def test_render_refuses_malformed_vision_runs(tmp_path, tok, vq, tiny_tokenizer):
    job, docs = build_job(tmp_path, tok, tiny_tokenizer, vq.fingerprint())
    bad = dict(docs[0], tokens=docs[0]["tokens"].copy())
    bad["tokens"][np.flatnonzero(bad["vision_mask"])[0]] = 9000  # not a VQGAN code
    d = tmp_path / "bad"
    d.mkdir()
    write_dataset(str(d), [encode_document(**bad)], kind="document", seq_len=None, num_shards=1, documents=1)
    with pytest.raises(InspectError, match="record 0, segment 1: .*not a code in 0..8191"):
        render_record(str(d), 0, str(tmp_path / "f"), io.StringIO(), image_tokenizer=vq)


def test_render_shows_a_bar_of_frames_on_a_terminal_only(tmp_path, tok, vq, tiny_tokenizer, capsys, monkeypatch):
    job, _ = build_job(tmp_path, tok, tiny_tokenizer, vq.fingerprint())
    docs = os.path.join(job, "documents")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    render_record(docs, 1, str(tmp_path / "f"), io.StringIO(), image_tokenizer=vq, progress=True)
    err = capsys.readouterr().err
    assert "rendering 3 frames" in err and "3/3" in err
    render_record(docs, 1, str(tmp_path / "g"), io.StringIO(), image_tokenizer=vq)  # progress off (--quiet)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    render_record(docs, 1, str(tmp_path / "h"), io.StringIO(), image_tokenizer=vq, progress=True)
    assert capsys.readouterr().err == ""
