"""The layout of a needle prompt: which haystack units, which needles where, and its rendering.

A `Layout` is the recipe of a text case: `render` turns it and the haystack into the prompt, byte
for byte, on any machine with the same haystack. The body joins items with one space, or nothing
where an item starts or ends with a newline or space (LWM's needle is "\\n...\\n"):

    before: prefix "USER: ", units ["A b.", "C d."], needle "\\nN\\n" in slot 1, partial "E" of "E f.",
            suffix " Q? ASSISTANT: "
    after:  "USER: A b.\\nN\\nC d. E Q? ASSISTANT: "
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lwmkit.eval.haystack import Haystack


def join_sep(a: str, b: str) -> str:
    """The separator between two body items: none around a newline or an existing space."""
    return "" if a.endswith(("\n", " ")) or b.startswith(("\n", " ")) or not a or not b else " "


@dataclass
class Layout:
    """Which haystack units, which needles where: everything `render` needs (the case recipe).

    Attributes:
      start: absolute index of the first unit; whole units are start, start+1, ... (cyclic).
      units: number of whole units.
      partial: (absolute unit index, characters kept) of the cut unit after the whole ones, or None.
      slots: per needle, the boundary it goes in: b < units (before whole unit b), units (after the
        whole units, before the partial) or units + 1 (at the end of the body).
    """

    prefix: str
    suffix: str
    needles: list[str]
    start: int
    units: int = 0
    partial: tuple[int, int] | None = None
    slots: list[int] = field(default_factory=list)

    def items(self, hay: Haystack, sparse: bool = False, from_pos: int = 0) -> list[tuple[str, str, int, int]]:
        """(kind, text, ref, pos) in body order, from whole unit `from_pos` (and the needles before it) on.

        Kinds: "unit" (ref: unit index, pos: its position 0..units-1), "partial" (ref: unit index),
        "needle" (ref: needle index), and with `sparse` "run": whole units pos ref..pos-1 that touch
        no needle, prefix or suffix, given without text (the model counts them from its cache).
        """
        n = len(hay.units)
        at: dict[int, list[int]] = {}
        for j, b in enumerate(self.slots):
            at.setdefault(b, []).append(j)
        m = self.units
        if sparse:
            special = {0, m - 1} | {k for b in at if b <= m for k in (b - 1, b)}
            positions = sorted(k for k in special if 0 <= k < m)
        else:
            positions = range(from_pos, m)
        out: list[tuple[str, str, int, int]] = []
        emitted = from_pos
        for k in positions:
            if k > emitted:
                out.append(("run", "", emitted, k))
            out += [("needle", self.needles[j], j, -1) for j in at.get(k, ())]
            u = (self.start + k) % n
            out.append(("unit", hay.units[u], u, k))
            emitted = k + 1
        out += [("needle", self.needles[j], j, -1) for j in at.get(m, ())]
        if self.partial is not None and self.partial[1] > 0:
            u, chars = self.partial
            out.append(("partial", hay.units[u][:chars], u, -1))
        out += [("needle", self.needles[j], j, -1) for j in at.get(m + 1, ())]
        return out

    def tail(self, hay: Haystack, from_pos: int) -> str:
        """The prompt from whole unit `from_pos` (or the needles before it) to the end."""
        return join_texts([t for _, t, _, _ in self.items(hay, from_pos=from_pos)]) + self.suffix

    def render(self, hay: Haystack) -> tuple[str, list[int]]:
        """The prompt, and the character offset of each needle in it."""
        parts = [self.prefix]
        pos = len(self.prefix)
        offsets = [0] * len(self.needles)
        prev = ""
        for i, (kind, text, ref, _) in enumerate(self.items(hay)):
            sep = join_sep(prev, text) if i else ""
            parts.append(sep)
            pos += len(sep)
            if kind == "needle":
                offsets[ref] = pos
            parts.append(text)
            pos += len(text)
            prev = text
        parts.append(self.suffix)
        return "".join(parts), offsets


def join_texts(texts: Sequence[str]) -> str:
    """Body items joined as `Layout.render` joins them."""
    parts: list[str] = []
    prev = ""
    for i, t in enumerate(texts):
        if i:
            parts.append(join_sep(prev, t))
        parts.append(t)
        prev = t
    return "".join(parts)
