"""`lwm-pack images --near-dedup`: resized, re-compressed and slightly cropped copies of a drawn scene
are removed before the VQGAN (each a failures.jsonl row naming its kept twin), other scenes and other
regions of one scene are kept, the counts reconcile, the manifest and the report show the stage, and
a rerun reads the stored sketches of the images it kept."""

from __future__ import annotations

import json

import pytest
from lwmkit.pipelines.cli import main
from lwmkit.pipelines.images.job import ImagesOptions, run_images
from PIL import Image

from .dedup.test_images import crop, drawn_scene, jpeg
from .helpers import count_sketch_calls, unset_proxies
from .image_inputs import encode, write_tar


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    unset_proxies(monkeypatch)


def _png(image: Image.Image) -> bytes:
    return encode(image, "PNG")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """One tar, nine samples (line = sample number): two scenes, four near-copies of them, and three
    non-copies (another scene, the left and right halves of one wide scene). Returns
    (tar, {copy line: original line}, number of non-copies + originals)."""
    d = tmp_path_factory.mktemp("images")
    one, two = drawn_scene(1), drawn_scene(2)
    wide = drawn_scene(9, size=(640, 240))
    w, h = one.size
    samples = [
        _png(one), _png(two),                                                   # 1, 2: originals
        _png(one.resize((w // 2, h // 2), Image.Resampling.BILINEAR)),          # 3: half size of 1
        jpeg(one, 25),                                                          # 4: re-compressed 1
        _png(crop(two, 0.03, 0.03, 0.97, 0.97)),                                # 5: 3% crop of 2
        jpeg(two.resize((int(w * 0.7), int(h * 0.7))), 40),                    # 6: smaller JPEG of 2
        _png(drawn_scene(3)),                                                   # 7: another scene
        _png(wide.crop((0, 0, 320, 240))), _png(wide.crop((320, 0, 640, 240))),  # 8, 9: two regions
    ]
    members = []
    for i, data in enumerate(samples, start=1):
        ext = "png" if data.startswith(b"\x89PNG") else "jpg"
        members += [(f"s/{i:04d}.{ext}", data), (f"s/{i:04d}.txt", f"picture number {i}".encode())]
    tar = write_tar(d / "a.tar", members)
    return tar, {3: 1, 4: 1, 5: 2, 6: 2}, len(samples) - 4


def _cli(tar, out, tokenizer, *extra) -> dict:
    argv = ["images", "--input", tar, "--tokenizer", tokenizer, "--output", str(out), "--vqgan-preset", "tiny",
            "--seq-len", "1024", "--batch-size", "4", "--quiet", *extra]
    assert main(argv) in (0, None)
    return json.loads((out / "manifest.json").read_text())


def _near_rows(out) -> list[dict]:
    rows = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    return sorted((r for r in rows if r["reason"] == "dedup:near_duplicate"), key=lambda r: r["line"])


def _reconciles(stages: dict) -> None:
    """seen = kept + dropped in every stage but read (one file in, its pairs out)."""
    for name, c in stages.items():
        assert name == "read" or c["seen"] == c["kept"] + c["dropped"], name


def test_planted_copies_are_removed_before_the_vqgan_and_others_kept(planted, tmp_path, bpe_model):
    tar, copies, keep = planted
    out = tmp_path / "on"
    manifest = _cli(tar, out, bpe_model, "--near-dedup")
    rows = _near_rows(out)
    assert [r["line"] for r in rows] == sorted(copies)
    for r in rows:
        assert r["stage"] == "near_dedup" and r["file"] == tar
        assert r["kept"] == f"{tar}:{copies[r['line']]}"
        assert 1 - 12 / 64 <= r["similarity"] <= 1.0
        assert f"near copy of {tar}:{copies[r['line']]}" in r["detail"]
    assert manifest["documents"] == keep
    s = manifest["stages"]
    _reconciles(s)
    assert s["near_dedup"] == {"seen": s["dedup"]["kept"], "kept": keep, "dropped": len(copies)}
    assert s["decode"]["seen"] == keep and s["encode"]["seen"] == keep  # the VQGAN never saw a copy
    near = manifest["near_dedup"]
    assert near["removed"] == len(copies) and near["cluster_sizes"] == {"3": 2}
    assert near["params"]["kind"] == "image" and near["params"]["max_distance"] == 12
    assert manifest["options"]["near_dedup"] is True and manifest["options"]["near_threshold"] == 12
    # The report shows the section for images as for books.
    assert main(["report", str(out)]) in (0, None)
    page = (out / "report" / "index.html").read_text()
    assert "<h2>Near-duplicates</h2>" in page and f"{len(copies)} removed; method phash-hamming-bands" in page
    assert "max_distance 12" in page and "data:image/png;base64," in page


def test_without_the_flag_every_copy_is_kept(planted, tmp_path, bpe_model):
    tar, copies, keep = planted
    manifest = _cli(tar, tmp_path / "off", bpe_model)
    assert manifest["documents"] == keep + len(copies)
    assert "near_dedup" not in manifest and "near_dedup" not in manifest["stages"]
    assert "near_dedup" not in manifest["options"] and "near_threshold" not in manifest["options"]
    assert _near_rows(tmp_path / "off") == []
    # A threshold of 0 bits removes only exact pHash matches: fewer copies.
    strict = _cli(tar, tmp_path / "strict", bpe_model, "--near-dedup", "--near-threshold", "0")
    assert all(r["similarity"] == 1.0 for r in _near_rows(tmp_path / "strict"))
    assert strict["near_dedup"]["removed"] < len(copies)
    with pytest.raises(ValueError, match="near_threshold"):
        ImagesOptions(inputs=("x",), output="o", tokenizer="t", near_dedup=True, near_threshold=40)


def test_a_rerun_reads_the_stored_sketches(planted, tmp_path, bpe_model, monkeypatch):
    tar, copies, keep = planted
    calls = count_sketch_calls(monkeypatch, "image_sketch")
    out = tmp_path / "out"

    def options(seq_lens):
        return ImagesOptions(inputs=(tar,), output=str(out), tokenizer=bpe_model, vqgan_preset="tiny",
                             seq_lens=seq_lens, batch_size=4, near_dedup=True)

    first = run_images(options((1024,)))
    assert len(calls) == keep + len(copies)
    rows = _near_rows(out)
    # Other packing options reuse the work store: the kept images' sketches are read back; only the
    # removed copies (never stored) are sketched again. Same verdicts, same counts.
    second = run_images(options((512,)))
    assert sorted(calls[keep + len(copies):]) == sorted(f"{tar}:{line}" for line in copies)
    assert _near_rows(out) == rows
    assert second["near_dedup"] == first["near_dedup"] and second["stages"] == first["stages"]
