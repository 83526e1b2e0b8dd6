"""Images: 64-bit perceptual hashes (pHash, via `imagehash`), Hamming bands, and the matcher.

pHash (the DCT of a 32x32 grey thumbnail, the 8x8 lowest frequencies compared with their median)
was chosen over PDQ (`pdqhash`) by a measured comparison on the sample images (see
docs/benchmarks.md, "Near-duplicates"): both cost about 4 ms an image, but PDQ's 16x16 frequencies
move a quarter of their bits under a 5% crop, where pHash moves 6 to 12 of 64, and PDQ needs a C++
build from source while imagehash is pure Python.

Two images are near-duplicates when their hashes differ in at most `max_distance` of 64 bits
(default 12: resized and re-compressed copies measured 0 to 6, 3% crops 4 to 12, different regions
of one photo 18 and more, different photos 24 and more). Pairs are found through `bands` Hamming
bands of `rows` bits each (bits drawn from seeded permutations): a pair at distance d shares a band
with probability 1 - (1 - (1 - d/64)**rows)**bands: 0.986 at d = 12, above 0.9999 at d <= 8, 3%
for unrelated hashes (d = 32). Every candidate is then checked exactly (a popcount), so a
collision never removes an image; the bucket check is vectorised.

Example:
    >>> m = ImageMatcher()
    >>> a = image_sketch("cat.png", Image.open("cat.png"), m.config)
    >>> b = image_sketch("cat-small.jpg", Image.open("cat-small.jpg"), m.config)
    >>> m.similarity(a, b)                 # 1 - Hamming / 64
    1.0
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from lwmkit.pipelines.dedup.bands import Banding, bit_bands, candidate_probability, hash_band_keys
from lwmkit.pipelines.dedup.sketch import Sketch, dist_version, params_digest

BITS = 64


class HashBanding:
    """What the image and video hash configs share: the checks of their `max_distance`, `bands`,
    `rows` and `bucket_anchors` fields, and the bit positions of the bands (from `seed`)."""

    max_distance: int
    bands: int
    rows: int
    seed: int
    bucket_anchors: int

    def __post_init__(self):
        name = type(self).__name__
        if not 0 <= self.max_distance < BITS // 2:
            raise ValueError(f"{name}.max_distance must be in [0, {BITS // 2}), got {self.max_distance}")
        if self.bands < 1 or not 1 <= self.rows <= BITS:
            raise ValueError(f"{name} needs bands >= 1 and rows in [1, {BITS}], got {self.bands} x {self.rows}")
        if self.bucket_anchors < 2:
            raise ValueError(f"{name}.bucket_anchors must be >= 2, got {self.bucket_anchors}")

    @cached_property
    def positions(self) -> np.ndarray:
        return bit_bands(BITS, Banding(self.bands, self.rows), self.seed)  # [bands, rows]


@dataclass(frozen=True)
class ImageHashConfig(HashBanding):
    """Image near-dedup parameters (see the module docstring for the defaults' reasons)."""

    max_distance: int = 12
    bands: int = 32
    rows: int = 10
    seed: int = 1
    bucket_anchors: int = 4096

    @property
    def threshold(self) -> float:
        return 1.0 - self.max_distance / BITS


def phash64(image) -> tuple[int, bool]:
    """(pHash as an int, bit i = coefficient i in row-major order; whether the image is flat).

    A flat image (grey thumbnail standard deviation < 2 levels: a black frame, a blank page) has
    no structure to match on; videos skip such frames.
    """
    import imagehash
    from PIL import Image

    grey = image.convert("L")
    bits = imagehash.phash(grey).hash.flatten()  # [64] bool
    value = int(np.sum(bits.astype(np.uint64) << np.arange(BITS, dtype=np.uint64), dtype=np.uint64))
    flat = float(np.asarray(grey.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32).std()) < 2.0
    return value, flat


def image_sketch(key: str, image, config: ImageHashConfig | None = None) -> Sketch:
    """The sketch of one image: uint64 [1] pHash; size = width x height (the survivor keeps the largest).

    Args:
      image: a PIL image, or encoded image bytes (decoded with Pillow).

    Raises:
      ValueError: bytes Pillow cannot decode (names the key).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, bytes | bytearray | memoryview):
        try:
            image = Image.open(io.BytesIO(image))
            image.load()
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"image {key!r} cannot be decoded: {e}") from e
    value, _ = phash64(image)
    return Sketch(key, image.width * image.height, np.array([value], dtype=np.uint64))


def hamming(a: int | np.ndarray, b: int | np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.asarray(a, dtype=np.uint64) ^ np.asarray(b, dtype=np.uint64))


class ImageMatcher:
    """Bands and verifies image sketches (the `Matcher` that `transforms.NearDuplicates` runs)."""

    kind = "image"

    def __init__(self, config: ImageHashConfig | None = None):
        self.config = config or ImageHashConfig()

    def band_keys(self, sketch: Sketch) -> list[bytes]:
        return hash_band_keys(int(sketch.values[0]), self.config.positions)

    def similarity(self, a: Sketch, b: Sketch) -> float:
        return 1.0 - float(hamming(a.values[0], b.values[0])) / BITS

    def bucket_pairs(self, members: Sequence[Sketch]) -> Iterator[tuple[int, int, float]]:
        values = np.array([int(m.values[0]) for m in members], dtype=np.uint64)  # [k]
        for i in range(min(len(members), self.config.bucket_anchors)):
            d = hamming(values[i + 1:], values[i])  # [k - i - 1]
            for j in np.flatnonzero(d <= self.config.max_distance):
                yield i, i + 1 + int(j), 1.0 - float(d[j]) / BITS

    def params(self) -> dict[str, Any]:
        c = self.config
        return {
            "method": "phash-hamming-bands",
            "library": "imagehash.phash",
            "library_version": dist_version("ImageHash"),
            "hash_bits": BITS,
            "max_distance": c.max_distance,
            "threshold": round(c.threshold, 6),
            "bands": c.bands,
            "rows": c.rows,
            "seed": c.seed,
            "candidate_probability_at_threshold": round(float(candidate_probability(c.threshold, c.bands, c.rows)), 6),
            "bucket_anchors": c.bucket_anchors,
            "similarity": "1 - Hamming distance / 64 to the kept twin",
        }

    @property
    def fingerprint(self) -> str:
        return params_digest({"library": "imagehash.phash", "version": dist_version("ImageHash"), "bits": BITS})

