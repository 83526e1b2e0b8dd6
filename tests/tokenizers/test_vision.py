"""Image preprocessing (LWM's, with every awkward input handled) and the LWM vision field layout."""

from __future__ import annotations

import io
import json
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from lwmkit.tokenizers.text import SentencePieceTokenizer
from lwmkit.tokenizers.vision import (
    CODES_PER_FRAME,
    EOF_ID,
    EOV_ID,
    IMAGE_SIZE,
    VISION_VOCAB_SIZE,
    ImageError,
    ImageOptions,
    VisionFieldError,
    codes_to_png,
    frame_codes,
    load_image,
    run_frames,
    to_model_input,
    vision_field,
    vision_runs,
)
from PIL import Image

IMAGES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "images"
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def encoded(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth-ish random RGB image (so resampling differences show up)."""
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(a)


def halves(w: int, h: int, left=RED, right=BLUE) -> Image.Image:
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, : w // 2] = left
    a[:, w // 2 :] = right
    return Image.fromarray(a)


def lwm_reference(im: Image.Image) -> np.ndarray:
    """lwm/vision_chat.py `_process_frame`, as LWM runs it (uint8, before the [-1, 1] scaling)."""
    size = 256
    width, height = im.size
    if width < height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_height, new_width = size, int(size * width / height)
    im = im.convert("RGB").resize((new_width, new_height))
    left, top = (new_width - size) / 2, (new_height - size) / 2
    return np.asarray(im.crop((left, top, (new_width + size) / 2, (new_height + size) / 2)))


def png_header_claiming(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h (valid CRC) but whose data is a tiny 8x8 image."""
    data = encoded(Image.new("L", (8, 8)))
    ihdr = bytearray(data[16:29])
    ihdr[0:4] = w.to_bytes(4, "big")
    ihdr[4:8] = h.to_bytes(4, "big")
    crc = zlib.crc32(b"IHDR" + bytes(ihdr)).to_bytes(4, "big")
    return data[:16] + bytes(ihdr) + crc + data[33:]


def reason(data: bytes, **options) -> str:
    with pytest.raises(ImageError) as e:
        load_image(data, ImageOptions(**options), name="x.img")
    assert str(e.value).startswith("x.img: " + e.value.reason)
    return e.value.reason


def test_constants():
    assert (IMAGE_SIZE, CODES_PER_FRAME, EOF_ID, EOV_ID, VISION_VOCAB_SIZE) == (256, 256, 8192, 8193, 8448)


@pytest.mark.parametrize("size", [(400, 300), (300, 400), (256, 256), (513, 257), (700, 1100)])
def test_matches_lwm_preprocessing_exactly(size):
    im = noise(*size)
    out = load_image(encoded(im))
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, lwm_reference(im))


def test_large_downscale_stays_within_one_level_of_lwm():
    # reducing_gap only kicks in for >= 6x shrinks; it must not visibly change the result.
    im = halves(2600, 1700)
    im.paste(noise(800, 600, seed=3).resize((1600, 1200)), (500, 250))
    diff = np.abs(load_image(encoded(im)).astype(int) - lwm_reference(im).astype(int))
    assert diff.mean() < 1.0


def test_extreme_aspect_uses_bounded_memory_and_still_matches_lwm():
    im = noise(3000, 40, seed=1)  # upscaled to 19200 x 256 by LWM; we resample only the crop
    diff = np.abs(load_image(encoded(im)).astype(int) - lwm_reference(im).astype(int))
    assert diff.max() <= 1


def test_centre_crop_keeps_the_middle():
    a = np.zeros((256, 768, 3), dtype=np.uint8)
    a[:, 256:512] = GREEN  # the middle third survives the crop, the sides do not
    out = load_image(encoded(Image.fromarray(a)))
    assert (out[:, 2:-2] == GREEN).all()


def test_to_model_input():
    x = to_model_input(np.array([[0, 127, 255]], dtype=np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[-1.0, 127 / 127.5 - 1, 1.0]])


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_corrupt_bytes(data):
    assert reason(data) == "corrupt_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(fmt):
    data = encoded(noise(300, 300), fmt)
    assert reason(data[: len(data) * 2 // 3]) == "truncated_image"


def test_grayscale_becomes_three_equal_channels():
    a = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    out = load_image(encoded(Image.fromarray(a)))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    np.testing.assert_array_equal(out[..., 0], a)


def test_palette_image():
    p = halves(256, 256).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert Image.open(io.BytesIO(encoded(p))).mode == "P"
    out = load_image(encoded(p))
    assert tuple(out[128, 10]) == RED and tuple(out[128, 250]) == BLUE


def test_palette_transparency_composites_on_white():
    p = halves(256, 256).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    red_index = p.getpixel((10, 128))
    data = encoded(p, transparency=red_index)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    out = load_image(data)
    assert tuple(out[128, 10]) == (255, 255, 255) and tuple(out[128, 250]) == BLUE


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composites_on_white(mode):
    a = np.zeros((256, 256, 4), dtype=np.uint8)
    a[..., :3] = (0, 0, 0)
    a[:, :128, 3] = 0  # transparent black -> white
    a[:, 128:, 3] = 255  # opaque black stays black
    a[:128, 128:, 3] = 128  # half-transparent black -> mid grey
    im = Image.fromarray(a).convert(mode)
    assert Image.open(io.BytesIO(encoded(im))).mode == mode
    out = load_image(encoded(im)).astype(int)
    assert (out[:, :120] == 255).all()
    assert (out[136:, 136:] == 0).all()
    assert (np.abs(out[10:100, 140:250] - 127) <= 1).all()


def test_sixteen_bit_png_is_scaled_not_clipped():
    a = np.zeros((256, 256), dtype=np.uint16)
    a[:, :128] = 65535
    a[:, 128:] = 128 * 257
    data = encoded(Image.fromarray(a))
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = load_image(data)
    assert (out[:, :120] == 255).all() and (out[:, 136:] == 128).all()


def test_cmyk_jpeg():
    data = encoded(halves(300, 256).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = load_image(data).astype(int)
    assert np.abs(out[128, 20] - RED).max() < 12 and np.abs(out[128, 235] - BLUE).max() < 12


@pytest.mark.parametrize("orientation, top, bottom", [(None, None, None), (6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation_is_applied(orientation, top, bottom):
    im = halves(384, 256)  # red left, blue right, as stored
    kw = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    out = load_image(encoded(im, "JPEG", quality=95, **kw)).astype(int)
    if orientation is None:
        assert np.abs(out[128, 10] - RED).max() < 10 and np.abs(out[128, 245] - BLUE).max() < 10
    else:  # 6: rotate 90 clockwise to display (left edge on top); 8: counter-clockwise
        assert np.abs(out[10, 128] - top).max() < 10 and np.abs(out[245, 128] - bottom).max() < 10


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame_or_drop(fmt):
    frames = [Image.new("RGB", (300, 300), c) for c in (RED, GREEN, BLUE)]
    data = encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = load_image(data).astype(int)
    assert np.abs(out - RED).max() < 8
    assert reason(data, animated="drop") == "animated"


def test_small_images_upscale_or_drop():
    im = noise(100, 120)
    out = load_image(encoded(im))
    np.testing.assert_array_equal(out, lwm_reference(im))
    assert reason(encoded(im), small="drop") == "too_small"
    assert reason(encoded(noise(20, 400))) == "too_small"  # below min_side=32 even when upscaling
    assert load_image(encoded(noise(20, 400)), ImageOptions(min_side=16)).shape == (256, 256, 3)


@pytest.mark.parametrize("w, h", [(30_000, 30_000), (10_000, 10_000)])
def test_decompression_bomb_refused_from_the_header_without_warnings(w, h):
    # 900M pixels trips PIL's DecompressionBombError, 100M only its warning; neither may escape.
    data = png_header_claiming(w, h)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reason(data) == "too_many_pixels"
    assert [str(c.message) for c in caught] == []


def test_pixel_cap_is_checked_before_decoding():
    # The data behind the header is 8x8; decoding it as 10000x9000 would fail as truncated or
    # corrupt. Allowed by max_pixels it does fail that way (and PIL's warning stays silent);
    # refused by max_pixels it never gets that far.
    data = png_header_claiming(10_000, 9_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reason(data, max_pixels=100_000_000) in ("truncated_image", "corrupt_image")
        assert reason(data, max_pixels=89_999_999) == "too_many_pixels"
    assert caught == []
    assert reason(encoded(noise(200, 200)), max_pixels=39_999) == "too_many_pixels"
    assert load_image(encoded(noise(200, 200)), ImageOptions(max_pixels=40_000)).shape == (256, 256, 3)


@pytest.mark.parametrize("mode", ["F", "LAB"])
def test_unsupported_mode(mode):
    data = encoded(Image.new(mode, (300, 300)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    assert reason(data) == "unsupported_mode"


@pytest.mark.parametrize(
    "kw, field",
    [({"small": "crop"}, "small"), ({"animated": "all"}, "animated"), ({"min_side": 0}, "min_side"),
     ({"min_side": 300}, "min_side"), ({"max_pixels": 10}, "max_pixels")],
)
def test_options_are_validated(kw, field):
    with pytest.raises(ValueError, match=f"ImageOptions.{field}="):
        ImageOptions(**kw)


@pytest.mark.skipif(not IMAGES.is_dir(), reason=f"sample images not present at {IMAGES}")
def test_real_sample_images_load():
    rows = [json.loads(line) for line in (IMAGES / "captions.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) >= 12
    for row in rows:
        data = (IMAGES / row["file"]).read_bytes()
        out = load_image(data, name=row["file"])
        assert out.shape == (256, 256, 3) and out.dtype == np.uint8
        assert out.std() > 1, row["file"]  # a real picture, not a blank
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in ("L", "RGB"):  # the plain cases must be exactly LWM's
                np.testing.assert_array_equal(out, lwm_reference(im), err_msg=row["file"])


# ---- the vision field ----


@pytest.fixture(scope="module")
def tok(tiny_tokenizer) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.from_file(tiny_tokenizer)


@pytest.mark.parametrize("frames", [1, 3])
def test_vision_field_layout(tok, frames):
    codes = np.random.default_rng(frames).integers(0, 8192, (frames, 16, 16))
    tokens, mask = vision_field(codes, tok)
    start, end = tok.encode("<vision>"), tok.encode("</vision>")
    assert tok.bos_id not in start and len(start) >= 2
    assert tokens.dtype == np.int32 and mask.dtype == bool
    assert len(tokens) == len(start) + 257 * frames + len(end)
    assert tokens[: len(start)].tolist() == start and tokens[len(tokens) - len(end) :].tolist() == end
    assert not mask[: len(start)].any() and not mask[len(tokens) - len(end) :].any()
    body = tokens[len(start) : len(start) + 257 * frames]
    assert mask[len(start) : len(start) + 257 * frames].all()
    for f in range(frames):
        frame = body[f * 257 : (f + 1) * 257]
        assert frame[:256].tolist() == codes[f].reshape(-1).tolist()  # row-major
        assert frame[256] == (EOV_ID if f == frames - 1 else EOF_ID)
    back = frame_codes(tokens, mask)
    assert len(back) == frames
    np.testing.assert_array_equal(np.stack(back), codes)


def test_vision_field_accepts_one_frame_as_2d(tok):
    codes = np.arange(256).reshape(16, 16)
    np.testing.assert_array_equal(vision_field(codes, tok)[0], vision_field(codes[None], tok)[0])


@pytest.mark.parametrize(
    "codes, message",
    [(np.zeros((1, 8, 8), int), "shape"), (np.full((1, 16, 16), 8192), "0..8191"),
     (np.full((16, 16), -1), "0..8191"), (np.zeros((1, 16, 16), np.float32), "integers"),
     (np.zeros((0, 16, 16), int), "F >= 1")],
)
def test_vision_field_rejects_bad_codes(tok, codes, message):
    with pytest.raises(ValueError, match=message):
        vision_field(codes, tok)


def test_frame_codes_over_several_fields_and_runs(tok):
    a, b = np.full((2, 16, 16), 7), np.full((1, 16, 16), 9)
    ta, ma = vision_field(a, tok)
    tb, mb = vision_field(b, tok)
    text = np.array(tok.encode("a caption between"), dtype=np.int32)
    tokens = np.concatenate([ta, text, tb])
    mask = np.concatenate([ma, np.zeros(len(text), bool), mb])
    runs = vision_runs(mask)
    assert [e - s for s, e in runs] == [514, 257]
    assert [int(f[0, 0]) for f in frame_codes(tokens, mask)] == [7, 7, 9]
    assert run_frames(tokens, *runs[1]).shape == (1, 16, 16)


def test_frame_codes_names_the_bad_token(tok):
    tokens, mask = vision_field(np.zeros((2, 16, 16), int), tok)
    s = vision_runs(mask)[0][0]
    swapped = tokens.copy()
    swapped[s + 256] = EOV_ID  # first frame must end with <eof>
    with pytest.raises(VisionFieldError, match=f"frame 0 ends with 8193 at token {s + 256}"):
        frame_codes(swapped, mask)
    bad = tokens.copy()
    bad[s + 257 + 3] = 8300
    with pytest.raises(VisionFieldError, match=f"token {s + 260} is 8300"):
        frame_codes(bad, mask)
    short = mask.copy()
    short[s] = False
    with pytest.raises(VisionFieldError, match="not a multiple of 257"):
        frame_codes(tokens, short)


class _PaletteDecoder:
    """A stand-in VQGAN decoder: code c paints its 16x16 pixel cell grey level c % 256."""

    def decode(self, codes):
        cells = (np.asarray(codes) % 256).astype(np.uint8)  # [B, 16, 16]
        pixels = np.repeat(np.repeat(cells, 16, axis=1), 16, axis=2)
        return np.repeat(pixels[..., None], 3, axis=-1)


def test_codes_to_png_lays_frames_left_to_right():
    codes = np.stack([np.full((16, 16), 10), np.full((16, 16), 200)])
    png = codes_to_png(codes, _PaletteDecoder())
    im = np.asarray(Image.open(io.BytesIO(png)))
    assert im.shape == (256, 512, 3)
    assert (im[:, :256] == 10).all() and (im[:, 256:] == 200).all()
    assert np.asarray(Image.open(io.BytesIO(codes_to_png(codes[0], _PaletteDecoder())))).shape == (256, 256, 3)


def test_codes_to_png_with_the_tiny_vqgan():
    vqgan = pytest.importorskip("lwmkit.tokenizers.vqgan", reason="engineer A's VQGAN not present yet")
    tokenizer = vqgan.ImageTokenizer.random("tiny", seed=0)
    codes = np.random.default_rng(0).integers(0, 8192, (2, 16, 16))
    png = codes_to_png(codes, tokenizer)
    im = np.asarray(Image.open(io.BytesIO(png)))
    assert im.shape == (256, 512, 3)
    np.testing.assert_array_equal(im, np.concatenate(list(tokenizer.decode(codes)), axis=1))


def test_a_run_cut_between_frames_may_end_in_eof_but_not_mid_frame():
    from lwmkit.tokenizers.vision import EOF_ID, EOV_ID, VisionFieldError, run_frames

    codes = np.arange(3 * 256).reshape(3, 16, 16) % 8192
    whole = np.concatenate([np.append(c.reshape(-1), EOF_ID) for c in codes])
    whole[-1] = EOV_ID
    np.testing.assert_array_equal(run_frames(whole, 0, len(whole)), codes)
    piece = whole[: 2 * 257]  # packing cut the video after its second frame
    np.testing.assert_array_equal(run_frames(piece, 0, len(piece)), codes[:2])
    bad = whole.copy()
    bad[256] = EOV_ID  # a middle frame may not end the video
    with pytest.raises(VisionFieldError, match="frame 0 ends with 8193"):
        run_frames(bad, 0, len(bad))
