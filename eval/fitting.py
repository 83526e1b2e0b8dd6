"""Exact-length contexts: fit haystack units, needles and a template to a token count, measured with
the model's own tokenizer.

The prompt is `prefix + body + suffix`; the body joins items (haystack units, needle sentences, and
one partial unit cut after a word, never after an abbreviation: `sentences.cut_allowed`; inside a word only
where no such cut gives the exact count)
with a space, or nothing where an item starts or ends with a newline. Most tokenizers are local at a space between words, so the prompt's token count is the sum
of the counts of its *blocks*: runs of items joined by anything but a plain space between two
haystack units (the prefix, suffix and every needle sit in a block with their neighbours). Unit
counts are cached per haystack, so the fit costs one batch over the units it uses, a few calls on
short strings while it searches the partial unit's cut, and one call on the whole prompt that
verifies the count. If the verification disagrees (a tokenizer whose merges cross spaces), the cut
is searched again with real counts of the prompt's tail, anchored on the measured total, and
verified again, up to `max_tries` whole-prompt counts in all; a fit that never verifies raises
`LengthFitError`. Only verified counts are ever reported.

Placement: a needle goes to the sentence boundary nearest its depth among the whole units; a needle
at depth 100% goes after the whole haystack, partial unit included, as LWM appends it (true depth
100%). The haystack is read once from `start` (cyclically past its last unit into its first); a
context that needs more text than the haystack holds raises `HaystackTooSmall`, unless
`allow_repeat`, when the repeated tokens are counted (`Fit.repeat_tokens`).

Example:
    before: target 60 tokens, prefix "USER: ", suffix " Q? ASSISTANT: ", needle at depth 0.5,
            units ["A b c.", "D e.", "F g h i.", ...]
    after:  "USER: A b c. D e.\\n<needle>\\nF g h i. ... Lorem ipsum Q? ASSISTANT: "   (60 tokens exactly;
            "Lorem ipsum" is the partial unit, cut after the word where the count comes out right)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lwmkit.eval.haystack import Haystack
from lwmkit.eval.prompt_layout import Layout, join_texts
from lwmkit.eval.sentences import cut_allowed

HAY_LIKE = ("unit", "run", "partial")
_MODES: dict[str, str] = {}


class LengthFitError(ValueError):
    """No context of exactly the requested token count was found."""


class HaystackTooSmall(LengthFitError):
    """The context needs more haystack text than the haystack holds (and repeating was not allowed)."""


class TokenCounter:
    """A text tokenizer (`encode_batch`) that counts its own calls and the tokens it produced."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.calls = 0
        self.tokens = 0
        try:
            self.key = str(tokenizer.fingerprint()["sha256"])
        except (AttributeError, KeyError, TypeError):
            self.key = f"object:{id(tokenizer)}"

    def counts(self, texts: Sequence[str]) -> list[int]:
        self.calls += 1
        n = [len(ids) for ids in self.tokenizer.encode_batch(list(texts))]
        self.tokens += sum(n)
        return n

    def count(self, text: str) -> int:
        return self.counts([text])[0]


@dataclass
class Fit:
    """A verified fit: the layout, its prompt, its measured token count and the needles' positions."""

    layout: Layout
    prompt: str
    tokens: int
    char_offsets: list[int]
    token_offsets: list[int]
    true_depths: list[float]
    haystack_tokens: int
    tries: int
    mode: str
    repeat_tokens: int = 0


class _Model:
    """The block model of the prompt's token count for one haystack, tokenizer and template.

    `cum[k]` is the token count of the whole units at positions 0..k-1 from the layout's start.
    """

    def __init__(self, hay: Haystack, counter: TokenCounter, mode: str, allow_repeat: bool = False):
        self.hay, self.counter, self.mode = hay, counter, mode
        # Unit positions from the start that may be used: every unit once, or any number of them.
        self.limit: int | None = None if allow_repeat else len(hay.units)
        self.memo: dict[str, int] = {}
        self.cum = np.zeros(1, dtype=np.int64)

    def text_counts(self, texts: list[str]) -> list[int]:
        todo = sorted({t for t in texts if t not in self.memo})
        if todo:
            for t, c in zip(todo, self.counter.counts(todo), strict=True):
                self.memo[t] = c
        return [self.memo[t] for t in texts]

    def blocks(self, layout: Layout) -> tuple[list[tuple[str, str, int, int]], list[tuple[int, int, str | None]]]:
        """The sparse items, and per block (first item, last item + 1, text); text is None for a
        lone unit or run (no prefix, suffix or needle joins it: its count comes from `cum`)."""
        items = layout.items(self.hay, sparse=True)
        groups: list[list[int]] = [[]]
        for i, (kind, _, _, _) in enumerate(items):
            # Units are stripped, so two haystack items always meet at a plain space: a soft junction.
            if i and kind in HAY_LIKE and items[i - 1][0] in HAY_LIKE:
                groups.append([])
            groups[-1].append(i)
        last = len(groups) - 1
        out: list[tuple[int, int, str | None]] = []
        for k, g in enumerate(groups):
            lo, hi = (g[0], g[-1] + 1) if g else (0, 0)
            if 0 < k < last and len(g) == 1 and items[lo][0] in ("unit", "run"):
                out.append((lo, hi, None))
                continue
            body = join_texts([items[i][1] for i in g])
            out.append((lo, hi, (layout.prefix if k == 0 else "") + body + (layout.suffix if k == last else "")))
        return items, out

    def block_counts(self, items, blocks: list[tuple[int, int, str | None]]) -> np.ndarray:
        out = np.zeros(len(blocks), dtype=np.int64)
        texts = []
        for k, (lo, _, text) in enumerate(blocks):
            if text is not None:
                texts.append((k, self.lead(k) + text))
                continue
            kind, _, ref, pos = items[lo]
            out[k] = self.cum[pos] - self.cum[ref] if kind == "run" else self.cum[pos + 1] - self.cum[pos]
        for (k, _), c in zip(texts, self.text_counts([t for _, t in texts]), strict=True):
            out[k] = c
        return out

    def lead(self, block: int) -> str:
        """What precedes block k > 0 when it is counted alone ("space" mode: the joining space)."""
        return " " if block and self.mode == "space" else ""

    def estimate(self, layout: Layout) -> int:
        items, blocks = self.blocks(layout)
        return int(self.block_counts(items, blocks).sum())


def detect_mode(hay: Haystack, counter: TokenCounter) -> str:
    """How a unit counts after a space: "dummy" (alone, like SentencePiece) or "space" (" " + unit)."""
    if counter.key in _MODES:
        return _MODES[counter.key]
    units = [u for u in hay.units[:200] if len(u) > 8][:24] or hay.units[:3]
    trip = [units[i : i + 3] for i in range(0, max(len(units) - 2, 1), 3)]
    joined = counter.counts([" ".join(t) for t in trip])
    alone = counter.counts([u for t in trip for u in t])
    spaced = counter.counts([" " + u for t in trip for u in t[1:]])
    score = {"dummy": 0, "space": 0}
    a = s = 0
    for t, j in zip(trip, joined, strict=True):
        score["dummy"] += j == sum(alone[a : a + len(t)])
        score["space"] += j == alone[a] + sum(spaced[s : s + len(t) - 1])
        a, s = a + len(t), s + len(t) - 1
    mode = "space" if score["space"] > score["dummy"] else "dummy"
    _MODES[counter.key] = mode
    return mode


def _place(depths: Sequence[float], cum: np.ndarray, units: int, partial_tokens: int) -> list[int]:
    """Per needle, the sentence boundary nearest its depth: before whole unit b (at cum[b] tokens),
    b = 0..units; a needle at depth 1.0 goes after the whole haystack (slot units + 1)."""
    total = cum[units] + partial_tokens
    slots = []
    for d in depths:
        if d >= 1.0:
            slots.append(units + 1)
            continue
        goal = d * total
        b = int(np.clip(np.searchsorted(cum[: units + 1], goal), 0, units))
        if b > 0 and goal - cum[b - 1] <= cum[b] - goal:
            b -= 1
        slots.append(b)
    return slots


def fit_context(
    hay: Haystack,
    tokenizer: Any,
    *,
    prefix: str,
    suffix: str,
    needles: Sequence[str],
    depths: Sequence[float],
    target: int,
    start: int = 0,
    max_tries: int = 6,
    counter: TokenCounter | None = None,
    allow_repeat: bool = False,
) -> Fit:
    """Builds the prompt of exactly `target` tokens (without BOS) under `tokenizer`.

    Args:
      hay: the haystack.
      tokenizer: the target model's tokenizer (`encode_batch`), or a TokenCounter around it.
      prefix, suffix: the template around the body (the question is in the suffix).
      needles, depths: needle texts and their requested depths (0..1) in haystack tokens.
      target: the prompt's token count.
      start: the first haystack unit (the haystack is read cyclically from there).
      max_tries: whole-prompt verifications allowed.
      allow_repeat: read the haystack more than once when it is too small (`Fit.repeat_tokens`
        counts what was repeated); otherwise such a context raises `HaystackTooSmall`.

    Raises:
      HaystackTooSmall: if the context needs more text than the haystack holds and not allow_repeat.
      LengthFitError: if the template and needles alone exceed `target`, or no fit verifies.
    """
    counter = counter or (tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer))
    mode = detect_mode(hay, counter)
    model = _Model(hay, counter, mode, allow_repeat)
    n = len(hay.units)
    fixed = sum(model.text_counts([prefix + suffix, *needles]))
    if fixed > target:
        raise LengthFitError(f"target {target} tokens: the template and needles alone take {fixed}")
    layout = _fit_once(model, prefix, suffix, list(needles), depths, target, start, n)
    for attempt in range(1, max_tries + 1):
        prompt, offsets = layout.render(hay)
        measured = counter.count(prompt)
        if measured == target:
            fit = _finish(model, layout, prompt, offsets, measured, attempt)
            if attempt > 1:
                # The block model was wrong here, so its needle offsets may be too: measure them.
                fit.token_offsets = counter.counts([prompt[:o] for o in offsets]) if offsets else []
            return fit
        if attempt < max_tries:
            layout = _refit_tail(model, layout, measured, target)
    raise LengthFitError(f"target {target} tokens: {max_tries} fits did not verify (last measured {measured})")


def _refit_tail(model: _Model, layout: Layout, measured: int, target: int) -> Layout:
    """Moves the cut so the count changes by target - measured, counting only the prompt's tail.

    The tail starts a few units before the cut; the head before it is unchanged, so the real count
    of a candidate is `measured` plus the change in its tail's count (exact for any tokenizer whose
    merges reach back less than a few units). Tries the current partial unit, then its neighbours.
    """
    hay, m, n = model.hay, layout.units, len(model.hay.units)
    at = lambda k: (layout.start + k) % n  # noqa: E731
    usable = lambda pos: model.limit is None or pos < model.limit  # noqa: E731
    cut_unit = layout.partial[0] if layout.partial else at(m)
    # (whole units, position of the partial unit after them); the current partial first.
    cands = [(m2, pos) for m2, pos in [(m, m), *((m, m + s) for s in range(6)), (m - 1, m - 1), (m + 1, m + 1),
                                       (m + 1, m + 2)] if 0 <= m2 < len(model.cum) - 1 and usable(pos)]  # fmt: skip
    cands = [(m, None), *dict.fromkeys(cands)]
    w = max(0, min(m2 for m2, _ in cands) - 3)
    want = model.text_counts([layout.tail(hay, w)])[0] + target - measured
    for in_words in (False, True):  # after a word in any candidate first; inside one only if none fits
        for m2, pos in cands:
            unit = cut_unit if pos is None else at(pos)
            slots = [min(b, m2) if b <= m else m2 + 1 for b in layout.slots]
            trial = Layout(layout.prefix, layout.suffix, layout.needles, layout.start, m2, None, slots)
            if model.text_counts([trial.tail(hay, w)])[0] == want:
                return trial
            tail_count = lambda lay: model.text_counts([lay.tail(hay, w)])[0]  # noqa: E731
            chars = _search_cut(model, trial, unit, want, count=tail_count, full_scan=True, in_words=in_words)
            if chars is not None:
                trial.partial = (unit, chars)
                return trial
    raise LengthFitError(f"target {target} tokens: no cut near unit {m} gives the count (measured {measured})")


def _cumulative(model: _Model, start: int, n: int, budget: int) -> np.ndarray:
    """Cumulative token counts of the units from `start`, far enough to hold `budget` (or every unit
    once, when the haystack may not repeat)."""
    size = 64
    while True:
        if model.limit is not None:
            size = min(size, model.limit)
        counts = model.hay.counts(model.counter, (start + np.arange(size)) % n, model.mode)
        cum = np.concatenate([[0], np.cumsum(counts)])
        if cum[-1] > budget + 2 * counts.max() or size == model.limit:
            return cum
        size *= 2


def _too_small(model: _Model, cum: np.ndarray, budget: int, goal: int) -> HaystackTooSmall:
    hay = model.hay
    return HaystackTooSmall(
        f"haystack {list(hay.spec.sources)} holds {int(cum[-1])} tokens ({len(hay.units)} units) under this "
        f"tokenizer; a context of {goal} tokens needs about {budget} of them: add sources, use shorter lengths, "
        "or allow repeating it (--allow-repeat; each case then records its repeated share)"
    )


def _fit_once(model, prefix, suffix, needles, depths, goal, start, n) -> Layout:
    hay = model.hay
    budget = goal - sum(model.text_counts([prefix + suffix, *needles]))
    cum = model.cum = _cumulative(model, start, n, max(budget, 0))
    if model.limit is not None and cum[-1] < budget:
        raise _too_small(model, cum, budget, goal)
    m = int(np.searchsorted(cum, max(budget, 0), side="right")) - 1

    def settle(m: int, partial_tokens: int = 0) -> Layout:
        return Layout(prefix, suffix, needles, start, m, None, _place(depths, cum, m, partial_tokens))

    # The block model may differ from the per-unit sum by a few tokens: walk m until it brackets goal.
    layout = settle(m)
    while m > 0 and model.estimate(layout) > goal:
        m -= 1
        layout = settle(m)
    while m + 1 < len(cum) and model.estimate(settle(m + 1)) <= goal:
        m += 1
        layout = settle(m)
    base = model.estimate(layout)
    if base == goal:
        return layout
    # Cuts fall after whole words only, so a unit offers a count only now and then: try the units
    # after the whole ones (skipping a few), then one or two whole units fewer with a longer cut.
    for m_try, in_words in [(m2, False) for m2 in (m, m - 1, m - 2)] + [(m, True)]:
        if m_try < 0:
            continue
        base = model.estimate(settle(m_try))
        if base > goal:
            continue
        slots = _place(depths, cum, m_try, goal - base)
        for skip in range(8):
            pos = m_try + skip
            if model.limit is not None and pos >= model.limit:
                break
            unit = (start + pos) % n
            trial = Layout(prefix, suffix, needles, start, m_try, (unit, 0), slots)
            chars = _search_cut(model, trial, unit, goal, in_words=in_words)
            if chars is not None:
                return Layout(prefix, suffix, needles, start, m_try, (unit, chars), slots)
    # The block model sees no exact cut (a tokenizer that is not local): start from the middle of the
    # next unit and let the measured refit (`_refit_tail`) find the cut.
    if model.limit is not None and m >= model.limit:
        raise _too_small(model, cum, budget, goal)
    unit = (start + m) % n
    text = hay.units[unit]
    cuts = allowed_cuts(text)
    chars = min(cuts, key=lambda c: abs(c - len(text) // 2))
    return Layout(prefix, suffix, needles, start, m, (unit, chars), _place(depths, cum, m, goal - base))


def allowed_cuts(text: str) -> list[int]:
    """The characters a partial unit may keep: after a word that is not an abbreviation (always
    at least the whole unit)."""
    return [c for c in range(1, len(text) + 1) if cut_allowed(text, c)]


def _search_cut(
    model: _Model, layout: Layout, unit: int, goal: int, count=None, full_scan: bool = False, in_words: bool = False
) -> int | None:
    """Characters of `unit` to keep so the count (default: the block model's) equals goal: a binary
    search over the allowed cuts (`allowed_cuts`; `in_words`: any character not after a space, the
    last resort when a word's tokens jump past the count), then a scan of the cuts around it
    (`full_scan`: then of every cut)."""
    text = model.hay.units[unit]
    cuts = [c for c in range(1, len(text) + 1) if text[c - 1] != " "] if in_words else allowed_cuts(text)
    count = count or model.estimate

    def est(i: int) -> int:
        layout.partial = (unit, cuts[i])
        return count(layout)

    lo, hi = 0, len(cuts) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if est(mid) < goal:
            lo = mid + 1
        else:
            hi = mid
    order = sorted(range(len(cuts)), key=lambda i: abs(i - lo))
    # Counts are almost monotone in the cut; a tokenizer whose merges lower the count as it grows needs the full scan.
    for i in order if full_scan else order[:5]:
        if est(i) == goal:
            return cuts[i]
    return None


def _finish(model: _Model, layout: Layout, prompt: str, offsets: list[int], tokens: int, tries: int) -> Fit:
    items, blocks = model.blocks(layout)
    cum_blocks = np.concatenate([[0], np.cumsum(model.block_counts(items, blocks))])
    m = layout.units
    partial = next((t for kind, t, _, _ in items if kind == "partial"), "")
    partial_tokens = model.text_counts([model.lead(1) + partial])[0] if partial else 0
    hay_total = int(model.cum[m]) + partial_tokens
    token_offsets, depths = [0] * len(layout.needles), [0.0] * len(layout.needles)
    k = 0
    for i, (kind, text, ref, _) in enumerate(items):
        while blocks[k][1] <= i:
            k += 1
        if kind != "needle":
            continue
        # Tokens before the needle: whole blocks before its block, then its block's text up to it.
        head = join_texts([t for _, t, _, _ in items[blocks[k][0] : i + 1]])[: -len(text) or None]
        head = (layout.prefix if k == 0 else "") + head
        token_offsets[ref] = int(cum_blocks[k]) + (model.text_counts([model.lead(k) + head])[0] if head else 0)
        slot = layout.slots[ref]
        before = int(model.cum[slot]) if slot <= m else hay_total
        depths[ref] = before / hay_total if hay_total else 0.0
    fit = Fit(layout, prompt, tokens, offsets, token_offsets, depths, hay_total, tries, model.mode)
    fit.repeat_tokens = _repeat_tokens(model, layout, partial_tokens)
    return fit


def _repeat_tokens(model: _Model, layout: Layout, partial_tokens: int) -> int:
    """Haystack tokens of the layout that repeat text it already holds (units read a second time)."""
    n, m = len(model.hay.units), layout.units
    repeated = int(model.cum[m] - model.cum[min(m, n)])
    if layout.partial is not None and layout.partial[1] > 0:
        pos = (layout.partial[0] - layout.start) % n
        if m >= n or pos < m:
            repeated += partial_tokens
    return repeated
