"""What every job's options share: the checks of the packing fields, the checks of a numeric field's
range and of a named choice, and the recorded options.

`BooksOptions`, `ImagesOptions` and `VideosOptions` each add their own fields; these helpers keep
their common fields checked with the same messages and recorded in the manifest the same way.
`check_ranges` and `check_choices` give every options class of a job (and of its stages) one way to
say which values a field allows: a range written the way its error shows it, or the names allowed.

Example:
    check_packing_fields((32768, 131072), 1 << 24)   # fine
    check_packing_fields((32768, 32768), 1 << 24)    # ValueError: seq_lens: ... repeats a length
    check_ranges(options, retries="0..10", timeout_s="(0, 3600]")
    # options.timeout_s == 0 -> ValueError: timeout_s: 0 is outside (0, 3600]
    check_choices(options, order=("shuffle", "chunk"))
    # options.order == "random" -> ValueError: order: 'random' is not one of ['shuffle', 'chunk']
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any

# Fields that say how and where a job runs, not what it makes: never part of the manifest's options.
RUN_FIELDS = (
    "output", "progress", "force", "direct_num_workers", "direct_running_mode", "runner", "beam_args",
    "retry_failures", "keep_work",
)
# The near-dedup fields of the jobs that have a near-dedup stage.
NEAR_FIELDS = ("near_dedup", "near_threshold")
MAX_SEQ_LEN = 1 << 24
# Default size of a work-store unit (`work_store.py`; memory per worker grows with it).
DEFAULT_UNIT_BYTES = 64 << 20


def check_packing_fields(seq_lens: Sequence[int], shard_tokens: int) -> None:
    """Raises ValueError naming the field for an empty, out-of-range or repeated length, or shard size < 1."""
    if not seq_lens:
        raise ValueError("seq_lens: give at least one sequence length")
    for n in seq_lens:
        if not 2 <= n <= MAX_SEQ_LEN:
            raise ValueError(f"seq_lens: {n} is outside 2..{MAX_SEQ_LEN}")
    if len(set(seq_lens)) != len(seq_lens):
        raise ValueError(f"seq_lens: {tuple(seq_lens)} repeats a length")
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens: {shard_tokens} must be >= 1")


_NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"
_RANGE = re.compile(
    rf"(?P<lo>{_NUMBER})\.\.(?P<hi>{_NUMBER})"  # lo..hi
    rf"|(?P<left>[\[(])(?P<lo2>{_NUMBER}), (?P<hi2>{_NUMBER})(?P<right>[\])])"  # [lo, hi], (lo, hi], ...
)


@functools.cache
def _bounds(spec: str) -> tuple[float, float, bool, bool]:
    """(low, high, low end included, high end included) of a range as `check_ranges` takes it."""
    m = _RANGE.fullmatch(spec)
    if not m:
        raise ValueError(f"range {spec!r}: write lo..hi, [lo, hi], (lo, hi], [lo, hi) or (lo, hi)")
    if m["lo"] is not None:
        return _number(m["lo"]), _number(m["hi"]), True, True
    return _number(m["lo2"]), _number(m["hi2"]), m["left"] == "[", m["right"] == "]"


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".e") else int(text)


def check_ranges(options: Any, **ranges: str) -> None:
    """Checks numeric fields of `options` against their ranges, in the order given.

    A range is written the way the error shows it: `lo..hi` and `[lo, hi]` include both ends,
    `(lo, hi]` leaves out its low end, `[lo, hi)` its high end.

    Raises:
      ValueError: `<field>: <value> is outside <range>` for the first field outside its range.
    """
    for name, spec in ranges.items():
        value = getattr(options, name)
        lo, hi, with_lo, with_hi = _bounds(spec)
        above_lo = lo <= value if with_lo else lo < value
        below_hi = value <= hi if with_hi else value < hi
        if not (above_lo and below_hi):
            raise ValueError(f"{name}: {value} is outside {spec}")


def check_choices(options: Any, **allowed: Sequence[str]) -> None:
    """Checks fields of `options` that name one of a few choices, in the order given.

    Raises:
      ValueError: `<field>: <value!r> is not one of <list of the allowed>` for the first field
        whose value is not among its allowed names.
    """
    for name, choices in allowed.items():
        value = getattr(options, name)
        if value not in choices:
            raise ValueError(f"{name}: {value!r} is not one of {list(choices)}")


def recorded_options(options: Any, not_recorded: Sequence[str] = (), near_when_on: bool = False) -> dict[str, Any]:
    """The options as the manifest records them: every field but `RUN_FIELDS` and `not_recorded`,
    with `inputs` and `seq_lens` as lists and `pack` in its recorded form. With `near_when_on`,
    `NEAR_FIELDS` only when `options.near_dedup` is on (outputs made without near dedup record what
    they recorded before it existed)."""
    d = dataclasses.asdict(options)
    unrecorded_near = NEAR_FIELDS if near_when_on and not options.near_dedup else ()
    for k in (*RUN_FIELDS, *not_recorded, *unrecorded_near):
        d.pop(k)
    d["inputs"] = list(options.inputs)
    d["seq_lens"] = list(options.seq_lens)
    d["pack"] = options.pack.to_json()
    return d
