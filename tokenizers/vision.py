"""Images in, LWM vision fields out: LWM's image preprocessing and the token layout of a vision field.

This module owns everything between image bytes and the token ids of one vision field, except the
VQGAN itself (`lwmkit.tokenizers.vqgan`, passed in where needed). It imports no JAX.

`load_image` is LWM's preprocessing (lwm/vision_chat.py `_process_frame`): EXIF orientation applied,
converted to RGB, short side resized to 256 with PIL bicubic (aspect kept, `int()` of the long side),
centre crop 256x256 (crop box rounded like PIL's `crop`). Inputs LWM would choke on are converted or
refused with an `ImageError` whose `.reason` a pipeline can count:

    corrupt_image    not a decodable image (unknown format, damaged data)
    truncated_image  the file ends early
    too_many_pixels  width x height above `ImageOptions.max_pixels` (read from the header, before
                     decoding; PIL's own DecompressionBombError/Warning never escapes: the warning
                     is silenced with `warnings.catch_warnings` around open/load only, which in
                     Python < 3.14 is process-wide for that moment)
    too_small        short side below `min_side`, or below 256 with `small="drop"`
    animated         more than one frame with `animated="drop"`
    unsupported_mode a pixel mode with no RGB meaning (e.g. float "F", "LAB")

Conversions: grayscale and palette -> RGB; alpha (RGBA, LA, PA, palette or colour-key transparency)
is composited on white; 16-bit gray (I;16*, I) is scaled by 255/65535; CMYK uses PIL's conversion;
animated GIF/WebP keep their first frame.

A vision field (LWM-FORMAT-NOTES; lwm/data.py `VisionTextProcessor`) for codes of F frames:

    before: codes int [F=2, 16, 16]
    after:  tokens      = ids("<vision>") + c0[0..255] + [8192] + c1[0..255] + [8193] + ids("</vision>")
            vision_mask = False x len(ids("<vision>")), True x 514, False x len(ids("</vision>"))

Example:
    >>> img = load_image(open("cat.jpg", "rb").read(), name="cat.jpg")   # uint8 [256, 256, 3]
    >>> codes = image_tokenizer.encode(img[None])                         # int32 [1, 16, 16]
    >>> tokens, vision_mask = vision_field(codes, text_tokenizer)         # 257 + tag tokens
    >>> [c.shape for c in frame_codes(tokens, vision_mask)]
    [(16, 16)]
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

IMAGE_SIZE = 256
CODES_PER_FRAME = 256  # 16 x 16 VQGAN codes per 256 x 256 frame
CODE_GRID = 16
NUM_CODES = 8192
EOF_ID = 8192  # end of a frame that is not the last
EOV_ID = 8193  # end of the last frame of a vision field
VISION_VOCAB_SIZE = 8448  # 8192 codes + 256 specials (8194..8447 unused)
TOKENS_PER_FRAME = CODES_PER_FRAME + 1
VISION_START = "<vision>"
VISION_END = "</vision>"

_SMALL = ("upscale", "drop")
_ANIMATED = ("first_frame", "drop")
_REDUCING_GAP = 3.0  # PIL: box-reduce first only when shrinking >= 6x; visually identical, much faster
_MAX_ASPECT_EXACT = 16  # beyond this aspect, resample only the crop region (bounded memory)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_UNSUPPORTED = {  # modes PIL would "convert" to RGB, but wrongly
    "F": "float pixels have no agreed range to map to 0..255",
    "LAB": "PIL copies L*a*b* channels into RGB unchanged",
}


class ImageError(ValueError):
    """An image cannot be turned into a 256x256 RGB frame.

    Attributes:
      reason: snake_case cause, one of those listed in the module docstring.
      detail: a human-readable explanation.
      name: the image's file or record name ("" when unknown).
    """

    def __init__(self, reason: str, detail: str, name: str = ""):
        self.reason = reason
        self.detail = detail
        self.name = name
        super().__init__(f"{name or '<image>'}: {reason}: {detail}")


class VisionFieldError(ValueError):
    """Tokens marked as vision do not form LWM vision frames (257 tokens each, ending in <eof>/<eov>)."""


@dataclass(frozen=True)
class ImageOptions:
    """How `load_image` treats images LWM's preprocessing does not expect.

    Attributes:
      small: images whose short side is below 256: "upscale" (LWM's behaviour) or "drop" (too_small).
      max_pixels: width x height above which an image is refused (too_many_pixels) before decoding;
        PIL's own bomb limit (2 x 89,478,485) still applies above that.
      animated: multi-frame images: keep the "first_frame", or "drop" them (animated).
      min_side: a short side below this is always too_small, whatever `small` says.
    """

    small: str = "upscale"
    max_pixels: int = 89_478_485
    animated: str = "first_frame"
    min_side: int = 32

    def __post_init__(self):
        if self.small not in _SMALL:
            raise ValueError(f"ImageOptions.small={self.small!r}; allowed: {', '.join(_SMALL)}")
        if self.animated not in _ANIMATED:
            raise ValueError(f"ImageOptions.animated={self.animated!r}; allowed: {', '.join(_ANIMATED)}")
        if not 1 <= self.min_side <= IMAGE_SIZE:
            raise ValueError(f"ImageOptions.min_side={self.min_side}; allowed: 1..{IMAGE_SIZE}")
        if not self.min_side**2 <= self.max_pixels <= 2**40:
            raise ValueError(f"ImageOptions.max_pixels={self.max_pixels}; allowed: min_side**2..2**40")


def _open(data: bytes, options: ImageOptions, name: str):
    """Opens the image and reads its header only; refuses oversized images before any decoding."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError("corrupt_image", "empty file", name)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel cap below; PIL's warning would only duplicate it, noisily.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError("too_many_pixels", f"PIL refused it before decoding: {e}", name) from e
    except UnidentifiedImageError as e:
        raise ImageError("corrupt_image", "not a recognised image format", name) from e
    except Exception as e:  # damaged headers raise OSError, SyntaxError, struct.error, ... by plugin
        raise ImageError(*_decode_failure(e), name) from e
    w, h = im.size
    if w * h > options.max_pixels:
        raise ImageError("too_many_pixels", f"{w}x{h} = {w * h} pixels > max_pixels {options.max_pixels}", name)
    if w <= 0 or h <= 0:
        raise ImageError("corrupt_image", f"size {w}x{h}", name)
    return im


def _decode_failure(e: Exception) -> tuple[str, str]:
    msg = str(e) or type(e).__name__
    if "truncated" in msg or isinstance(e, EOFError):
        return "truncated_image", msg
    return "corrupt_image", f"{type(e).__name__}: {msg}"


def _decode(im, options: ImageOptions, name: str):
    """Picks the frame, decodes it and applies the EXIF orientation."""
    from PIL import ImageOps

    frames = getattr(im, "n_frames", 1)
    if frames > 1 and options.animated == "drop":
        raise ImageError("animated", f"{frames} frames", name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PIL notes odd EXIF/palette data it copes with
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
    except Exception as e:
        raise ImageError(*_decode_failure(e), name) from e
    return im


def _to_rgb(im, name: str):
    """RGB with alpha composited on white; 16-bit gray scaled to 8 bits."""
    from PIL import Image

    mode = im.mode
    if mode in _SIXTEEN_BIT:
        a = np.asarray(im).astype(np.int64)  # [h, w]
        a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535  # round(a / 257)
        return Image.fromarray(a.astype(np.uint8)).convert("RGB")
    if mode in _UNSUPPORTED:
        raise ImageError("unsupported_mode", f"pixel mode {mode!r}: {_UNSUPPORTED[mode]}", name)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError("unsupported_mode", f"pixel mode {mode!r} has no RGB conversion", name) from e


def _resize_crop(im, options: ImageOptions, name: str):
    """LWM's short-side resize to 256 and centre crop; returns uint8 [256, 256, 3]."""
    from PIL import Image

    w, h = im.size
    short = min(w, h)
    if short < options.min_side:
        raise ImageError("too_small", f"{w}x{h}: short side {short} < min_side {options.min_side}", name)
    if short < IMAGE_SIZE and options.small == "drop":
        raise ImageError("too_small", f"{w}x{h}: short side {short} < {IMAGE_SIZE}", name)
    size = IMAGE_SIZE
    if w < h:  # lwm/vision_chat.py _process_frame, term for term
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    left, top = round((nw - size) / 2), round((nh - size) / 2)  # PIL's crop() rounds its box like this
    if max(nw, nh) <= _MAX_ASPECT_EXACT * size:
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=_REDUCING_GAP)
        im = im.crop((left, top, left + size, top + size))
    else:
        # Resample only the crop region: same result within +-1, without a huge intermediate image.
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        im = im.resize((size, size), Image.BICUBIC, box=box, reducing_gap=_REDUCING_GAP)
    out = np.asarray(im, dtype=np.uint8)
    if out.shape != (size, size, 3):  # cannot happen for an RGB input; a cheap guard
        raise ImageError("corrupt_image", f"preprocessing gave shape {out.shape}", name)
    return out


def load_image(data: bytes, options: ImageOptions = ImageOptions(), name: str = "") -> np.ndarray:
    """LWM's preprocessing of one encoded image (PNG, JPEG, GIF, WebP, ... anything PIL reads).

    Args:
      data: the image file's bytes.
      options: how unusual images are treated (see `ImageOptions`).
      name: the file or record name, used in errors.

    Returns:
      uint8 [256, 256, 3] RGB.

    Raises:
      ImageError: with `.reason` naming the cause (see the module docstring).
    """
    im = _open(data, options, name)
    im = _decode(im, options, name)
    im = _to_rgb(im, name)
    return _resize_crop(im, options, name)


def preprocess_frame(frame: np.ndarray, options: ImageOptions = ImageOptions(), name: str = "") -> np.ndarray:
    """`load_image`'s resize and centre crop for one decoded video frame (uint8 RGB [h, w, 3]).

    Raises:
      ImageError: too_small, as `load_image` (a video frame is never animated, alpha or 16-bit).
    """
    from PIL import Image

    return _resize_crop(Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), "RGB"), options, name)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 images [..., 256, 256, 3] -> float32 in [-1, 1] (x / 127.5 - 1), the VQGAN's input."""
    return np.asarray(images, dtype=np.float32) / 127.5 - 1.0


class _Encoder(Protocol):
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...


class _ImageDecoder(Protocol):
    def decode(self, codes: np.ndarray) -> np.ndarray: ...


def vision_tags(text_tokenizer: _Encoder) -> tuple[np.ndarray, np.ndarray]:
    """Text ids of "<vision>" and "</vision>" (no BOS/EOS), as LWM's loader tokenizes them."""
    start, end = text_tokenizer.encode_batch([VISION_START, VISION_END])
    return np.asarray(start, dtype=np.int32), np.asarray(end, dtype=np.int32)


def _check_codes(codes: Any) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (CODE_GRID, CODE_GRID) or arr.shape[0] < 1:
        raise ValueError(f"codes must be [F, {CODE_GRID}, {CODE_GRID}] with F >= 1, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_CODES):
        raise ValueError(f"codes must lie in 0..{NUM_CODES - 1}, got {arr.min()}..{arr.max()}")
    return arr


def vision_field(codes: np.ndarray, text_tokenizer: _Encoder) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of one vision field in LWM's layout (see the module docstring).

    Args:
      codes: int [F, 16, 16] VQGAN codes of F frames (an image is F=1; [16, 16] is taken as F=1).
      text_tokenizer: encodes the "<vision>"/"</vision>" tags (`encode_batch`, no BOS/EOS).

    Returns:
      (tokens int32 [n], vision_mask bool [n]), n = tags + 257 F; the mask is True exactly on
      codes, <eof> and <eov>.

    Raises:
      ValueError: if codes have the wrong shape or lie outside 0..8191.
    """
    arr = _check_codes(codes)
    start, end = vision_tags(text_tokenizer)
    frames = np.empty((arr.shape[0], TOKENS_PER_FRAME), dtype=np.int32)  # [F, 257]
    frames[:, :CODES_PER_FRAME] = arr.reshape(arr.shape[0], CODES_PER_FRAME)
    frames[:, CODES_PER_FRAME] = EOF_ID
    frames[-1, CODES_PER_FRAME] = EOV_ID
    tokens = np.concatenate([start, frames.reshape(-1), end]).astype(np.int32)
    mask = np.zeros(tokens.shape[0], dtype=bool)
    mask[len(start) : len(start) + frames.size] = True
    return tokens, mask


def vision_runs(vision_mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of True in `vision_mask`, in order."""
    m = np.asarray(vision_mask, dtype=bool).astype(np.int8)
    edges = np.diff(np.concatenate([[0], m, [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def run_frames(tokens: np.ndarray, start: int, end: int) -> np.ndarray:
    """The codes [F, 16, 16] of one vision run `tokens[start:end]` (codes, <eof>, ..., <eov>).

    The last frame may also end in <eof>: a long video that packing cut between frames leaves
    pieces whose runs stop at a frame boundary before the video's end.

    Raises:
      VisionFieldError: naming the token position, if the run is not whole frames ending in
        <eof> (all but the last) and <eov> or <eof> (the last), with codes in 0..8191.
    """
    run = np.asarray(tokens[start:end])
    if run.shape[0] == 0 or run.shape[0] % TOKENS_PER_FRAME:
        raise VisionFieldError(
            f"vision tokens [{start}, {end}): {run.shape[0]} tokens, not a multiple of {TOKENS_PER_FRAME}"
        )
    frames = run.reshape(-1, TOKENS_PER_FRAME)  # [F, 257]
    ends = frames[:, CODES_PER_FRAME]
    want = np.full(frames.shape[0], EOF_ID)
    want[-1] = EOV_ID if ends[-1] != EOF_ID else EOF_ID  # a cut piece may stop at a frame boundary
    if (bad := np.flatnonzero(ends != want)).size:
        f = int(bad[0])
        raise VisionFieldError(
            f"vision tokens [{start}, {end}): frame {f} ends with {int(ends[f])} at token "
            f"{start + (f + 1) * TOKENS_PER_FRAME - 1}, expected {int(want[f])} (<eof>={EOF_ID}, <eov>={EOV_ID})"
        )
    codes = frames[:, :CODES_PER_FRAME]
    if (bad := np.flatnonzero((codes < 0) | (codes >= NUM_CODES))).size:
        i = int(bad[0])
        at = start + (i // CODES_PER_FRAME) * TOKENS_PER_FRAME + i % CODES_PER_FRAME
        raise VisionFieldError(
            f"vision tokens [{start}, {end}): token {at} is {int(codes.reshape(-1)[i])}, "
            f"not a code in 0..{NUM_CODES - 1}"
        )
    return codes.reshape(-1, CODE_GRID, CODE_GRID).astype(np.int32)


def frame_codes(tokens: np.ndarray, vision_mask: np.ndarray) -> list[np.ndarray]:
    """The inverse of `vision_field`: each frame's int32 [16, 16] codes, over every vision run in order.

    Raises:
      VisionFieldError: if a run of vision tokens is not well-formed frames (see `run_frames`).
    """
    tokens = np.asarray(tokens)
    if tokens.shape != np.shape(vision_mask):
        raise VisionFieldError(f"tokens {tokens.shape} and vision_mask {np.shape(vision_mask)} differ in shape")
    return [f for s, e in vision_runs(vision_mask) for f in run_frames(tokens, s, e)]


def codes_to_png(codes: np.ndarray, image_tokenizer: _ImageDecoder) -> bytes:
    """Decodes codes [16, 16] (one frame) or [F, 16, 16] with the VQGAN into PNG bytes.

    F frames come out as one strip 256 high and 256 F wide, frames left to right.

    Raises:
      ValueError: if codes have the wrong shape or range.
    """
    from PIL import Image

    arr = _check_codes(codes)
    pixels = np.asarray(image_tokenizer.decode(arr.astype(np.int32)), dtype=np.uint8)  # [F, 256, 256, 3]
    strip = np.concatenate(list(pixels), axis=1)  # [256, 256 F, 3]
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="PNG")
    return buf.getvalue()
