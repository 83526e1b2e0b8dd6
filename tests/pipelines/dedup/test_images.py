"""Images: resized, re-compressed and slightly cropped copies are removed; other regions of one photo
and other photos are kept (default thresholds, the real Beam stages)."""

import io

import numpy as np
import pytest
from lwmkit.pipelines.dedup import ImageHashConfig, ImageMatcher, image_sketch
from PIL import Image, ImageDraw

from tests.pipelines.dedup.runs import run_sketches
from tests.pipelines.helpers import SHARED_DATA

IMAGES = SHARED_DATA / "images"
PHOTOS = ("camera", "chelsea", "coins", "horse", "cell", "clock_motion")


def jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def crop(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((int(w * left), int(h * top), int(w * right), int(h * bottom)))


def copies_of(key: str, image: Image.Image) -> dict[str, object]:
    w, h = image.size
    return {
        f"{key}~half": image.resize((w // 2, h // 2), Image.Resampling.BILINEAR),
        f"{key}~jpeg25": jpeg(image, 25),  # bytes: decoded by image_sketch
        f"{key}~crop3": crop(image, 0.03, 0.03, 0.97, 0.97),
        f"{key}~small-jpeg": jpeg(image.resize((int(w * 0.7), int(h * 0.7))), 40),
    }


def drawn_scene(seed: int, size=(320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
        r = int(rng.integers(10, 60))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


def test_drawn_scenes_copies_removed_others_kept(tmp_path):
    cfg = ImageHashConfig()
    docs: dict[str, object] = {}
    truth = set()
    for i in range(6):
        key = f"scene-{i}"
        docs[key] = drawn_scene(i)
        for copy, image in copies_of(key, docs[key]).items():
            if copy.endswith(("half", "jpeg25")):
                docs[copy] = image
                truth.add((copy, key))
    sketches = [image_sketch(k, v, cfg) for k, v in sorted(docs.items())]
    rows = run_sketches(sketches, ImageMatcher(cfg), tmp_path / "d.jsonl")
    # The full-size original is the survivor (the largest); a JPEG copy of the same size ties on
    # size and loses on key ("scene-0" < "scene-0~jpeg25").
    assert {(r["key"], r["kept"]) for r in rows} == truth


def test_undecodable_bytes_name_the_image():
    with pytest.raises(ValueError, match="image 'bad.png' cannot be decoded"):
        image_sketch("bad.png", b"\x89PNG not really")


def test_params_record_the_rule():
    p = ImageMatcher().params()
    assert (p["max_distance"], p["bands"], p["rows"], p["hash_bits"]) == (12, 32, 10, 64)
    assert p["candidate_probability_at_threshold"] > 0.98
    with pytest.raises(ValueError, match="max_distance"):
        ImageHashConfig(max_distance=40)


@pytest.mark.realdata
def test_sample_photos_copies_removed_regions_of_one_photo_kept(tmp_path):
    if not IMAGES.is_dir():
        pytest.skip(f"sample images not found under {IMAGES} (the shared data folder beside the checkout)")
    cfg = ImageHashConfig()
    docs: dict[str, object] = {}
    truth = set()
    for name in PHOTOS:
        original = Image.open(IMAGES / f"{name}.png").convert("RGB")
        docs[name] = original
        for copy, image in copies_of(name, original).items():
            docs[copy] = image
            truth.add((copy, name))
        # Non-copies: different regions of one photo (one scene, other pictures).
        for region, box in {"left": (0, 0, 0.5, 1), "right": (0.5, 0, 1, 1), "top": (0, 0, 1, 0.5),
                            "bottom": (0, 0.5, 1, 1), "nw": (0, 0, 0.67, 0.67), "se": (0.33, 0.33, 1, 1)}.items():
            docs[f"{name}@{region}"] = crop(original, *box)
    sketches = [image_sketch(k, v, cfg) for k, v in sorted(docs.items())]
    rows = run_sketches(sketches, ImageMatcher(cfg), tmp_path / "d.jsonl")
    assert {(r["key"], r["kept"]) for r in rows} == truth
