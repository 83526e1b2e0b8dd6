"""Loss-weight policies: parsing, each named rule, combinations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lwmkit.packing.loss import LossPolicy


def test_docstring_per_document_example():
    w = LossPolicy.parse("per_document").apply(np.ones(4, np.float32), np.zeros(4, bool), np.array([1, 1, 1, 2]))
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0], rtol=1e-6)


def test_as_is_keeps_weights_and_spec_round_trips():
    p = LossPolicy.parse("as_is")
    w = np.array([0, 1, 0.5, 1], np.float32)
    assert np.array_equal(p.apply(w, np.zeros(4, bool), np.ones(4, np.int32)), w)
    for spec in ("as_is", "lwm_balance", "per_document", "modality:text=1,vision=0.5", "modality:text=2+per_document"):
        assert LossPolicy.parse(LossPolicy.parse(spec).spec) == LossPolicy.parse(spec)


def test_modality_scales_each_id_space():
    vision = np.array([False, True, True, False])
    w = LossPolicy.parse("modality:text=1,vision=0.5").apply(np.ones(4, np.float32), vision, np.ones(4, np.int32))
    assert w.tolist() == [1.0, 0.5, 0.5, 1.0]


def test_lwm_balance_gives_each_modality_half_of_the_weight():
    vision = np.array([False] * 2 + [True] * 6)
    w = LossPolicy.parse("lwm_balance").apply(np.ones(8, np.float32), vision, np.ones(8, np.int32))
    assert w[~vision].sum() == pytest.approx(4.0) and w[vision].sum() == pytest.approx(4.0)


def test_lwm_balance_leaves_a_single_modality_alone():
    w = np.array([0, 1, 1], np.float32)
    assert np.array_equal(LossPolicy.parse("lwm_balance").apply(w, np.zeros(3, bool), np.ones(3, np.int32)), w)


def test_padding_and_zero_weight_segments_stay_zero():
    seg = np.array([1, 1, 2, 2, 0])
    w = np.array([0, 0, 1, 1, 0], np.float32)  # segment 1 is all prompt (weight 0)
    out = LossPolicy.parse("per_document").apply(w, np.zeros(5, bool), seg)
    assert out.tolist() == [0, 0, 1, 1, 0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=6),
    st.integers(0, 2**31),
)
def test_per_document_equalises_segments_and_keeps_the_total(segment_lengths, seed):
    rng = np.random.default_rng(seed)
    seg = np.repeat(np.arange(1, len(segment_lengths) + 1), segment_lengths)
    w = rng.uniform(0.1, 2.0, seg.size).astype(np.float32)
    out = LossPolicy.parse("per_document").apply(w, rng.random(seg.size) < 0.5, seg)
    sums = np.bincount(seg, weights=out)[1:]
    np.testing.assert_allclose(sums, sums[0], rtol=1e-5)
    assert out.sum() == pytest.approx(w.sum(), rel=1e-5)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("vision_only", "not one of"),
        ("modality", "needs factors"),
        ("modality:audio=1", "'text' or 'vision'"),
        ("modality:text=x", "needs a number"),
        ("modality:text=-1", ">= 0"),
        ("per_document:3", "takes no arguments"),
    ],
)
def test_bad_specs_name_the_problem(spec, match):
    with pytest.raises(ValueError, match=match):
        LossPolicy.parse(spec)
