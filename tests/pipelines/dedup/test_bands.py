import numpy as np
import pytest
from lwmkit.pipelines.dedup.bands import (
    Banding,
    bit_bands,
    candidate_probability,
    hash_band_keys,
    optimal_bands,
    text_band_keys,
)


def test_equal_weights_match_datasketch_and_fn_weight_moves_the_curve_left():
    # datasketch's MinHashLSH(threshold=0.8, num_perm=128) chooses 9 x 13 by the same integral.
    b = optimal_bands(0.8, 128)
    assert (b.bands, b.rows) == (9, 13)
    w = optimal_bands(0.8, 128, fp_weight=0.1, fn_weight=0.9)
    assert (w.bands, w.rows) == (14, 9)
    assert candidate_probability(0.8, 14, 9) > candidate_probability(0.8, 9, 13)
    assert w.fn_area < b.fn_area and w.fp_area > b.fp_area


def test_candidate_probability_is_an_s_curve():
    s = np.linspace(0, 1, 101)
    p = candidate_probability(s, 14, 9)
    assert p[0] == 0.0 and p[-1] == 1.0 and np.all(np.diff(p) >= 0)


@pytest.mark.parametrize("kwargs", [dict(threshold=1.0, num_values=128), dict(threshold=0.8, num_values=0),
                                    dict(threshold=0.8, num_values=8, fp_weight=-1)])
def test_bad_arguments_are_named(kwargs):
    with pytest.raises(ValueError):
        optimal_bands(**kwargs)
    with pytest.raises(ValueError, match="bands >= 1"):
        Banding(0, 3)


def test_text_keys_agree_exactly_on_the_bands_that_agree():
    a = np.arange(12, dtype=np.uint32)
    b = a.copy()
    b[7] = 99  # band 2 of 4 x 3 differs
    ka, kb = text_band_keys(a, Banding(4, 3)), text_band_keys(b, Banding(4, 3))
    assert [x == y for x, y in zip(ka, kb, strict=True)] == [True, True, False, True]
    assert len(set(ka)) == 4  # the band index keeps equal values in different bands apart


def test_bit_bands_are_seeded_and_have_distinct_bits():
    pos = bit_bands(64, Banding(32, 10), seed=1)
    assert pos.shape == (32, 10)
    assert all(len(set(row)) == 10 for row in pos.tolist())
    assert np.array_equal(pos, bit_bands(64, Banding(32, 10), seed=1))
    assert not np.array_equal(pos, bit_bands(64, Banding(32, 10), seed=2))
    counts = np.bincount(pos.ravel(), minlength=64)
    assert counts.min() >= 4 and counts.max() <= 6  # every bit used about equally


def test_flipping_a_bit_changes_only_the_bands_that_hold_it():
    pos = bit_bands(64, Banding(32, 10), seed=1)
    value = 0x0123_4567_89AB_CDEF
    ka = hash_band_keys(value, pos)
    kb = hash_band_keys(value ^ (1 << 17), pos)
    changed = [i for i, (x, y) in enumerate(zip(ka, kb, strict=True)) if x != y]
    assert changed == [i for i in range(32) if 17 in pos[i].tolist()]
