"""`engine.job_options.check_ranges` (a range written the way its error shows it) and `check_choices`."""

from types import SimpleNamespace

import pytest
from lwmkit.pipelines.engine.job_options import check_choices, check_ranges


@pytest.mark.parametrize(
    "value, spec, ok",
    [
        (1, "1..64", True), (64, "1..64", True), (0, "1..64", False), (65, "1..64", False),
        (0.0, "[0, 1]", True), (1.0, "[0, 1]", True), (1.01, "[0, 1]", False),
        (0, "(0, 3600]", False), (0.001, "(0, 3600]", True), (3600, "(0, 3600]", True),
        (0.04, "[0.04, 60]", True), (0.03, "[0.04, 60]", False),
        (1e9, "0..1e9", True), (1.5e9, "0..1e9", False), (1, "[0, 1)", False),
    ],
)
def test_range_ends(value, spec, ok):
    if ok:
        check_ranges(SimpleNamespace(x=value), x=spec)
    else:
        with pytest.raises(ValueError) as e:
            check_ranges(SimpleNamespace(x=value), x=spec)
        assert str(e.value) == f"x: {value} is outside {spec}"


def test_first_bad_field_in_the_order_given_is_named():
    with pytest.raises(ValueError, match="^b: 5 is outside 1..4$"):
        check_ranges(SimpleNamespace(a=9, b=5), b="1..4", a="1..4")


def test_a_range_it_cannot_read_is_an_error():
    with pytest.raises(ValueError, match="range '1-4'"):
        check_ranges(SimpleNamespace(a=2), a="1-4")


def test_choices_name_the_field_value_and_the_allowed():
    check_choices(SimpleNamespace(order="chunk", kind="a"), order=("shuffle", "chunk"), kind=("a", "b"))
    with pytest.raises(ValueError) as e:
        check_choices(SimpleNamespace(order="random"), order=("shuffle", "chunk"))
    assert str(e.value) == "order: 'random' is not one of ['shuffle', 'chunk']"
