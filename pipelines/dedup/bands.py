"""Locality-sensitive banding: how many bands of how many rows, and the bucket keys of one sketch.

Two sketches become candidates when all `rows` values of at least one of `bands` bands agree. For a
pair of similarity s (the chance that one value agrees) that happens with probability
`1 - (1 - s**rows)**bands`, an S-curve. `optimal_bands` picks the (bands, rows) whose curve best
separates pairs below the threshold from pairs above it: it minimises the weighted area of false
positives (the curve below the threshold) plus false negatives (one minus the curve above it), the
rule datasketch's `MinHashLSH` uses.

Examples:
    >>> optimal_bands(0.8, 128)           # MinHash, 128 permutations, Jaccard 0.8, equal weights
    Banding(bands=9, rows=13, fp_area=0.0253..., fn_area=0.0333...)
    >>> b = optimal_bands(0.8, 128, fp_weight=0.1, fn_weight=0.9)   # lwmkit's default weights
    >>> b.bands, b.rows
    (14, 9)
    >>> round(float(candidate_probability(0.8, 14, 9)), 3)
    0.867
    >>> text_band_keys(np.arange(6, dtype=np.uint32), Banding(2, 3))
    [b"\\x00\\x00" + values 0..2 as little-endian u32, b"\\x01\\x00" + values 3..5]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Banding:
    """`bands` x `rows`; the areas are the false-positive / false-negative integrals it was chosen by."""

    bands: int
    rows: int
    fp_area: float = 0.0
    fn_area: float = 0.0

    def __post_init__(self):
        if self.bands < 1 or self.rows < 1:
            raise ValueError(f"Banding needs bands >= 1 and rows >= 1, got bands={self.bands}, rows={self.rows}")

    def to_json(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def candidate_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that a pair of per-value agreement `s` shares at least one band."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def _area(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0) if len(x) > 1 else 0.0


def optimal_bands(threshold: float, num_values: int, fp_weight: float = 0.5, fn_weight: float = 0.5,
                  low: float = 0.0, max_draws: int | None = None) -> Banding:
    """(bands, rows) minimising fp_weight * FP area + fn_weight * FN area around `threshold`.

    Args:
      threshold: the similarity that separates duplicates from non-duplicates, in (0, 1).
      num_values: values per sketch; bands * rows <= num_values (or <= max_draws when bands may
        draw values with replacement, as the Hamming bands do).
      fp_weight, fn_weight: weights of the two error areas.
      low: the false-positive area is integrated from `low` (pairs less similar cost nothing).

    Raises:
      ValueError: threshold outside (0, 1), num_values < 1, or negative weights.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if num_values < 1:
        raise ValueError(f"num_values must be >= 1, got {num_values}")
    if fp_weight < 0 or fn_weight < 0 or fp_weight + fn_weight == 0:
        raise ValueError(f"weights must be >= 0 and not both 0, got fp={fp_weight}, fn={fn_weight}")
    budget = max_draws or num_values
    below = np.linspace(low, threshold, 1001)
    above = np.linspace(threshold, 1.0, 1001)
    best = None
    for bands in range(1, budget + 1):
        for rows in range(1, (max_draws or num_values) // bands + 1):
            if max_draws is not None and rows > num_values:
                break
            fp = _area(candidate_probability(below, bands, rows), below)
            fn = _area(1.0 - candidate_probability(above, bands, rows), above)
            cost = fp_weight * fp + fn_weight * fn
            if best is None or cost < best[0] - 1e-15:
                best = (cost, Banding(bands, rows, fp, fn))
    return best[1]


def text_band_keys(values: np.ndarray, banding: Banding) -> list[bytes]:
    """Bucket keys of a MinHash signature: the band index (2 bytes) then that band's raw values.

    Raw values rather than a hash of them: two sketches share a key exactly when the band agrees.
    """
    rows = banding.rows
    v = np.ascontiguousarray(values[: banding.bands * rows], dtype="<u4")
    return [b.to_bytes(2, "little") + v[b * rows:(b + 1) * rows].tobytes() for b in range(banding.bands)]


def bit_bands(bits: int, banding: Banding, seed: int) -> np.ndarray:
    """Bit positions of each Hamming band: [bands, rows], drawn from seeded permutations of the bits.

    Bands take consecutive slices of a permutation of all bits, then of the next permutation, so each
    band's bits are distinct and every bit is used about equally often.
    """
    rng = np.random.default_rng(seed)
    need = banding.bands * banding.rows
    order = np.concatenate([rng.permutation(bits) for _ in range(-(-need // bits) + 1)])
    out = np.empty((banding.bands, banding.rows), dtype=np.int64)
    pos = 0
    for b in range(banding.bands):
        if len(set(order[pos:pos + banding.rows].tolist())) < banding.rows:
            pos = -(-pos // bits) * bits  # a band never straddles two permutations (no repeated bit)
        out[b] = order[pos:pos + banding.rows]
        pos += banding.rows
    return out


def hash_band_keys(value: int, positions: np.ndarray) -> list[bytes]:
    """Bucket keys of one 64-bit hash: per band, the band index (2 bytes) and its bits (8 bytes)."""
    bits = (np.uint64(value) >> positions.astype(np.uint64)) & np.uint64(1)  # [bands, rows]
    weights = np.uint64(1) << np.arange(positions.shape[1], dtype=np.uint64)
    packed = (bits * weights).sum(axis=1, dtype=np.uint64)  # [bands]
    return [b.to_bytes(2, "little") + int(p).to_bytes(8, "little") for b, p in enumerate(packed)]
