"""Cutting one example to fit seq_len, by what kind of example it is: where its loss sits and what conditions it.

An example longer than `seq_len` cannot be packed whole. How it is cut depends on its kind
(`ExampleShape.kind`, from the document record) and the long-document policy:

    text           a book, a web page: loss on every token. `split`: pieces of at most seq_len,
                   each cut at the last allowed point; every piece trains.
    understanding  vision then caption: loss at the end. `keep_tail`: keep the example's prefix
                   (BOS, template text, the opening "<vision>" tag), drop whole leading frames until
                   the rest fits, keep the tail (the later frames, "</vision>", the caption, EOS).
    generation     caption then vision: the caption conditions every vision token. `repeat_condition`:
                   cut between frames; every continuation piece starts with the condition (BOS,
                   caption, "<vision>") again, with weight 0 on the repeat.
    chat           vision or context, then question/answer turns: loss on answers, whose evidence
                   may sit anywhere before them. `drop`: a tail could hold answers without their
                   evidence, which teaches answering from nothing.

`by_kind` (the default) applies the action above to each kind; `by_kind:chat=keep_tail,...` changes
some of them; `split`, `truncate` and `drop` apply one action to every kind (the pre-v2 behaviour).
No action ever cuts inside an atomic span (a frame, a QA turn). A cut piece is a `Piece`: `prefix`
tokens from the start of its document, then `length - prefix` tokens from `offset` on.

Example, seq_len 10, a generation example of 16 tokens: condition [0, 3), frames [3, 7), [7, 11),
[11, 15), then EOS at 15 (glued to the last frame):
    repeat_condition -> Piece(offset 0, length 7) [0, 7); Piece(offset 7, length 7, prefix 3)
                        [0, 3) + [7, 11); Piece(offset 11, length 8, prefix 3) [0, 3) + [11, 16)
An understanding example of 16 tokens, prefix 3, frames as above, caption [15, 16):
    keep_tail        -> Piece(offset 11, length 8, prefix 3): [0, 3) + [11, 16); 2 frames dropped
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

EXAMPLE_KINDS = ("text", "understanding", "generation", "chat")
ACTIONS = ("split", "truncate", "drop", "keep_tail", "repeat_condition")
ALLOWED_ACTIONS: dict[str, tuple[str, ...]] = {
    "text": ("split", "truncate", "drop"),
    "understanding": ("split", "truncate", "drop", "keep_tail"),
    "generation": ("split", "truncate", "drop", "repeat_condition"),
    "chat": ("split", "truncate", "drop", "keep_tail"),
}
BY_KIND = {"text": "split", "understanding": "keep_tail", "generation": "repeat_condition", "chat": "drop"}
LONG_DOCUMENT_POLICIES = ("by_kind", "split", "truncate", "drop")
Span = tuple[int, int]


@dataclass(frozen=True, order=True)
class Piece:
    """Tokens `[0, prefix)` then `[offset, offset + length - prefix)` of document `doc`; `length` in all.

    `prefix` is 0 for a plain contiguous piece. It is the repeated condition of a generation
    example's continuation, or the kept start of an example whose leading frames were dropped.
    """

    doc: int
    offset: int
    length: int
    prefix: int = 0

    def to_list(self) -> list[int]:
        """The plan's plain-data form, [doc, offset, length, prefix]; `Piece(*form)` reads it back."""
        return [self.doc, self.offset, self.length, self.prefix]

    def take(self, values: np.ndarray) -> np.ndarray:
        """This piece's entries of a per-token array of its document."""
        body = values[self.offset : self.offset + self.length - self.prefix]
        return np.concatenate([values[: self.prefix], body]) if self.prefix else body


@dataclass(frozen=True)
class ExampleShape:
    """What cutting needs to know of an example besides its length and atomic spans.

    Attributes:
      kind: one of EXAMPLE_KINDS.
      prefix: tokens at its start that a cut keeps or repeats (BOS, template text, the caption of a
        generation example, the opening vision tag): the index of its first vision token, or the
        start of a chat example's context.
      frames: how many of its atomic spans (the first ones) hold vision tokens.
    """

    kind: str = "text"
    prefix: int = 0
    frames: int = 0

    def __post_init__(self):
        if self.kind not in EXAMPLE_KINDS:
            raise ValueError(f"example kind {self.kind!r} is not one of {list(EXAMPLE_KINDS)}")
        if self.prefix < 0 or self.frames < 0:
            raise ValueError(f"prefix ({self.prefix}) and frames ({self.frames}) must be >= 0")

    def to_list(self) -> list:
        return [self.kind, self.prefix, self.frames]

    @classmethod
    def from_list(cls, value) -> ExampleShape:
        return cls() if value is None else cls(str(value[0]), int(value[1]), int(value[2]))


TEXT = ExampleShape()


def infer_shape(vision_mask: np.ndarray, loss_weights: np.ndarray, spans: Sequence[Span], kind: str | None = None,
                prefix: int | None = None) -> ExampleShape:
    """The shape of an example from its arrays; `kind` and `prefix` as recorded, when they are.

    A record without a kind (format v1) is `text` without vision tokens, `generation` when a
    vision token carries loss, else `understanding`. The prefix defaults to the first vision
    token's index (0 without vision).
    """
    vision = np.asarray(vision_mask, dtype=bool)
    has_vision = bool(vision.any())
    if kind is None:
        if not has_vision:
            kind = "text"
        elif np.any(np.asarray(loss_weights)[vision] > 0):
            kind = "generation"
        else:
            kind = "understanding"
    if prefix is None:
        prefix = int(np.argmax(vision)) if has_vision else 0
    frames = 0
    if has_vision and len(spans):
        before = np.concatenate([[0], np.cumsum(vision, dtype=np.int64)])
        for a, b in spans:
            if before[b] - before[a] == 0:
                break
            frames += 1
    return ExampleShape(kind, int(prefix), frames)


@dataclass(frozen=True)
class LongDocumentPolicy:
    """What happens to an example longer than seq_len, per example kind; see the module docstring."""

    actions: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, spec: str | LongDocumentPolicy) -> LongDocumentPolicy:
        """Parses `by_kind`, `by_kind:chat=keep_tail,understanding=drop`, `split`, `truncate` or `drop`.

        Raises:
          ValueError: naming the unknown policy, kind or action and listing the valid ones.
        """
        if isinstance(spec, LongDocumentPolicy):
            return spec
        base, _, rest = str(spec).partition(":")
        if base in ("split", "truncate", "drop") and not rest:
            return cls(tuple((k, base) for k in EXAMPLE_KINDS))
        if base != "by_kind":
            raise ValueError(
                f"long-document policy {spec!r} is not one of {list(LONG_DOCUMENT_POLICIES)} "
                "(by_kind takes overrides: by_kind:chat=keep_tail,understanding=drop)"
            )
        actions = dict(BY_KIND)
        for item in filter(None, rest.split(",")):
            kind, eq, action = item.partition("=")
            if not eq or kind not in EXAMPLE_KINDS:
                raise ValueError(f"long-document policy {spec!r}: {item!r} is not kind=action; kinds: {list(EXAMPLE_KINDS)}")
            if action not in ALLOWED_ACTIONS[kind]:
                raise ValueError(f"long-document policy {spec!r}: {kind} examples take one of {list(ALLOWED_ACTIONS[kind])}, not {action!r}")
            actions[kind] = action
        return cls(tuple((k, actions[k]) for k in EXAMPLE_KINDS))

    @property
    def spec(self) -> str:
        """The canonical name: `split`/`truncate`/`drop` for one action, else `by_kind[:overrides]`."""
        acts = dict(self.actions)
        if len(set(acts.values())) == 1 and next(iter(acts.values())) in ("split", "truncate", "drop"):
            return next(iter(acts.values()))
        changed = [f"{k}={a}" for k, a in self.actions if BY_KIND[k] != a]
        return "by_kind" + (":" + ",".join(changed) if changed else "")

    def action(self, kind: str) -> str:
        return dict(self.actions)[kind]


@dataclass
class CutStats:
    """What cutting did to examples longer than seq_len (or with unplaceable spans)."""

    documents_split: int = 0
    documents_truncated: int = 0
    documents_dropped: int = 0
    tokens_dropped: int = 0
    documents_tail_kept: int = 0
    frames_dropped: int = 0
    documents_condition_repeated: int = 0
    condition_tokens_repeated: int = 0
    dropped: list[tuple[int, str, str]] = field(default_factory=list)  # (doc, reason, detail)

    def _counts(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "dropped"]

    def merge(self, other: CutStats) -> None:
        for name in self._counts():
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.dropped += other.dropped

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self._counts()}


def _check_spans(doc: int, n: int, spans: Sequence[Span]) -> None:
    prev = 0
    for a, b in spans:
        if not (prev <= a < b <= n):
            raise ValueError(f"document {doc}: atomic spans must be sorted, disjoint, non-empty and in [0, {n}]; got {list(spans)}")
        prev = b


def _drop(stats: CutStats, doc: int, n: int, reason: str, detail: str) -> tuple[list[Piece], CutStats]:
    stats.documents_dropped = 1
    stats.tokens_dropped = n
    stats.dropped.append((doc, reason, detail))
    return [], stats


def _split(doc: int, n: int, seq_len: int, spans: Sequence[Span], truncate: bool, stats: CutStats) -> list[Piece]:
    starts = [a for a, _ in spans]
    pieces: list[Piece] = []
    offset = 0
    while offset < n:
        cut = min(n, offset + seq_len)
        j = bisect.bisect_left(starts, cut) - 1  # the last span starting before `cut`
        if j >= 0 and starts[j] < cut < spans[j][1]:
            cut = starts[j]  # cut before the span; it fits in the next piece (checked by the caller)
        pieces.append(Piece(doc, offset, cut - offset))
        offset = cut
        if truncate:
            break
    if truncate:
        stats.documents_truncated = 1
        stats.tokens_dropped = n - pieces[0].length
    else:
        stats.documents_split = 1
    return pieces


def _keep_tail(doc: int, n: int, seq_len: int, spans: Sequence[Span], shape: ExampleShape, stats: CutStats):
    """The prefix, then the shortest tail that fits, starting between spans and keeping a frame."""
    p = shape.prefix
    lo = max(p, n - (seq_len - p))
    b = lo
    for a, e in spans:  # the first allowed point at or after lo
        if a < b < e:
            b = e
    limit = spans[shape.frames - 1][0] if shape.frames else n
    if p >= seq_len or b > limit or b >= n:
        what = "its last frame and what follows" if shape.frames else "its tail"
        return _drop(stats, doc, n, "tail_too_long", f"{shape.kind} example of {n} tokens: the prefix ({p} tokens) and {what} "
                     f"exceed seq_len {seq_len} (policy keep_tail)")
    stats.documents_tail_kept = 1
    stats.frames_dropped = sum(1 for _, e in spans[: shape.frames] if e <= b)
    stats.tokens_dropped = b - p
    return [Piece(doc, b, p + n - b, p)], stats


def _repeat_condition(doc: int, n: int, seq_len: int, spans: Sequence[Span], shape: ExampleShape, stats: CutStats):
    """Pieces cut between frames; every piece after the first starts with the condition again."""
    c = shape.prefix
    cuts = [a for a, _ in spans[1 : shape.frames]]  # between frames; text after the last frame stays with it
    bounds = cuts + [n]
    first = next((x for x in reversed(bounds) if x <= seq_len), None)
    if first is None or first < spans[0][1] or any(c + (e - a) > seq_len for a, e in zip(bounds, bounds[1:])):
        return _drop(stats, doc, n, "frame_too_long", f"generation example of {n} tokens: its condition ({c} tokens) and one "
                     f"frame exceed seq_len {seq_len} (policy repeat_condition)")
    pieces = [Piece(doc, 0, first)]
    offset = first
    room = seq_len - c
    while offset < n:
        cut = bounds[bisect.bisect_right(bounds, offset + room) - 1]
        pieces.append(Piece(doc, offset, c + cut - offset, c))
        offset = cut
    stats.documents_split = 1
    stats.documents_condition_repeated = 1
    stats.condition_tokens_repeated = c * (len(pieces) - 1)
    return pieces, stats


def cut_document(doc: int, n: int, seq_len: int, spans: Sequence[Span] = (), policy: str | LongDocumentPolicy = "by_kind",
                 shape: ExampleShape = TEXT) -> tuple[list[Piece], CutStats]:
    """Cuts one example of n tokens into pieces of at most seq_len, never inside an atomic span.

    Returns:
      (pieces in order, what was cut, truncated, repeated or dropped).

    Raises:
      ValueError: for an unknown policy, malformed spans or a shape that does not fit the example.
    """
    action = LongDocumentPolicy.parse(policy).action(shape.kind)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if n < 0:
        raise ValueError(f"document {doc} has negative length {n}")
    if shape.prefix > n or shape.frames > len(spans):
        raise ValueError(f"document {doc}: shape {shape} does not fit {n} tokens with {len(spans)} atomic spans")
    stats = CutStats()
    _check_spans(doc, n, spans)
    too_long = [(a, b) for a, b in spans if b - a > seq_len]
    if too_long:
        return _drop(stats, doc, n, "atomic_span_too_long",
                     f"an atomic span of {too_long[0][1] - too_long[0][0]} tokens exceeds seq_len {seq_len}")
    if n <= seq_len:
        return ([Piece(doc, 0, n)] if n else []), stats
    if action == "drop":
        return _drop(stats, doc, n, "too_long", f"{shape.kind} example of {n} tokens exceeds seq_len {seq_len} (policy drop)")
    if action == "keep_tail":
        return _keep_tail(doc, n, seq_len, spans, shape, stats)
    if action == "repeat_condition" and shape.frames:
        return _repeat_condition(doc, n, seq_len, spans, shape, stats)
    return _split(doc, n, seq_len, spans, action == "truncate", stats), stats
