"""Needle tasks, prompt templates and length x depth grids, each a frozen config with named presets.

A task turns a seeded `random.Random` into a `NeedleSet`: the needle sentences to hide, the
question, the expected answers and how to score them. The case builder (`cases.py`) places the
needles and fits the haystack around them.

Tasks (presets of `TaskConfig`):
    lwm_single         LWM's needle: "The special magic {city} number is: {7 digits}", its question
                       and chat template (scripts/eval_needle.py).
    lwm_multi          LWM's multi-needle: insert k cities, ask for m of them (eval_needle_multi.py).
    multikey           RULER niah_multikey: one asked key among k-1 distractor needles.
    multivalue         RULER niah_multivalue: one key with v values, all asked.
    multiquery         RULER niah_multiquery: k keys, all asked.
    variable_tracking  RULER vt: a chain "VAR A = 12345", "VAR B = VAR A", ...; name every variable.

Depth: the first asked needle (the first statement of a chain) goes at the grid's depth; the other
needles go at seeded random depths (chain statements after it, in order).

Example:
    >>> ns = make_needles(task_preset("lwm_single"), random.Random(0))
    >>> ns.needles[0].text, ns.question, ns.expected
    ('\\nThe special magic Reykjavik number is: 8056020\\n', 'What is the special magic Reykjavik number?', ['8056020'])
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from lwmkit.eval.needles import KEY_KINDS, VALUE_KINDS, draw_keys, draw_values, english_list

TASK_KINDS = ("niah", "variable_tracking")
SCORINGS = ("substring", "fraction", "choice")
_PLACEHOLDER = re.compile(r"\{(context|question|intro|answer_prefix)\}")


@dataclass(frozen=True)
class Template:
    """A chat template: `pattern` holds {context} once, and {question}, {intro}, {answer_prefix}.

    Attributes:
      pattern: the prompt text; the haystack replaces {context}.
      bos: the model sees BOS before the prompt (it counts toward the context length).
    """

    pattern: str
    bos: bool = True

    def __post_init__(self):
        if self.pattern.count("{context}") != 1:
            raise ValueError(f"Template.pattern must hold {{context}} exactly once, got {self.pattern!r}")

    def split(self, question: str, intro: str = "", answer_prefix: str = "") -> tuple[str, str]:
        """(prefix, suffix) around the context, with the placeholders filled in one pass."""
        values = {"question": question, "intro": intro, "answer_prefix": answer_prefix}
        before, after = self.pattern.split("{context}")
        fill = lambda s: _PLACEHOLDER.sub(lambda m: values[m.group(1)], s)  # noqa: E731
        return fill(before), fill(after)


TEMPLATES: dict[str, Template] = {
    # LWM scripts/eval_needle.py OURS_TEMPLATE.
    "lwm": Template(
        "You are a helpful assistant. USER: {context} {question} Don't give information outside the "
        "document or repeat your findings. Keep your response short and direct. ASSISTANT: "
    ),
    # LWM scripts/eval_needle_multi.py OURS_TEMPLATE.
    "lwm_multi": Template(
        "You are a helpful assistant. USER: {context} {question} Don't give information outside the document. "
        "ASSISTANT: "
    ),
    # RULER's task template inside LLaMA-2's [INST] wrapper, with the answer prefix RULER appends.
    "ruler": Template("[INST] {intro}\n{context}\n{question} [/INST] {answer_prefix}"),
    # No chat wrapper: for chat endpoints that apply their own template.
    "plain": Template("{intro}{context}\n\n{question}", bos=False),
}


@dataclass(frozen=True)
class TaskConfig:
    """One needle task.

    Attributes:
      name: the task's name in results.
      kind: "niah" (key -> value needles) or "variable_tracking".
      needles: keys inserted (niah; distinct) or statements in the chain (variable_tracking: hops + 1).
      queries: keys asked (niah), 1 <= queries <= needles.
      values_per_key: values per asked key (multivalue); each is its own needle sentence.
      key_kind, value_kind: see `needles.py`.
      needle: needle text with {key} and {value}.
      question, question_plural: with {key} / {keys} (an English list) and {value}.
      intro, answer_prefix: template parts (RULER); {keys} and {value} are filled in.
      template: a `TEMPLATES` name.
      answer_tokens: tokens reserved for the answer inside the requested length.
      scoring: "substring" (all expected strings in the answer), "fraction" (share found).
    """

    name: str
    kind: str = "niah"
    needles: int = 1
    queries: int = 1
    values_per_key: int = 1
    key_kind: str = "city"
    value_kind: str = "number"
    needle: str = "\nThe special magic {key} number is: {value}\n"
    question: str = "What is the special magic {key} number?"
    question_plural: str = "What are the special magic numbers for {keys}?"
    intro: str = ""
    answer_prefix: str = ""
    template: str = "lwm"
    answer_tokens: int = 32
    scoring: str = "substring"

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"TaskConfig.kind={self.kind!r}; allowed: {list(TASK_KINDS)}")
        if not 1 <= self.needles <= 64:
            raise ValueError(f"TaskConfig.needles={self.needles}; allowed: 1..64")
        if not 1 <= self.queries <= self.needles:
            raise ValueError(f"TaskConfig.queries={self.queries}; allowed: 1..needles ({self.needles})")
        if not 1 <= self.values_per_key <= 16:
            raise ValueError(f"TaskConfig.values_per_key={self.values_per_key}; allowed: 1..16")
        if self.values_per_key > 1 and self.needles != 1:
            raise ValueError(f"TaskConfig.values_per_key={self.values_per_key} needs needles=1, got {self.needles}")
        if self.kind == "variable_tracking" and self.needles < 2:
            raise ValueError(f"TaskConfig.needles={self.needles}; variable_tracking needs >= 2 statements")
        if self.key_kind not in KEY_KINDS:
            raise ValueError(f"TaskConfig.key_kind={self.key_kind!r}; allowed: {list(KEY_KINDS)}")
        if self.value_kind not in VALUE_KINDS:
            raise ValueError(f"TaskConfig.value_kind={self.value_kind!r}; allowed: {list(VALUE_KINDS)}")
        if self.template not in TEMPLATES:
            raise ValueError(f"TaskConfig.template={self.template!r}; allowed: {list(TEMPLATES)}")
        if not 1 <= self.answer_tokens <= 4096:
            raise ValueError(f"TaskConfig.answer_tokens={self.answer_tokens}; allowed: 1..4096")
        if self.scoring not in SCORINGS[:2]:
            raise ValueError(f"TaskConfig.scoring={self.scoring!r}; allowed: {list(SCORINGS[:2])}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_RULER_NEEDLE = "One of the special magic numbers for {key} is: {value}."
_RULER = dict(
    key_kind="word",
    needle=_RULER_NEEDLE,
    question="What is the special magic number for {key} mentioned in the provided text?",
    question_plural="What are all the special magic numbers for {keys} mentioned in the provided text?",
    intro="Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards.",
    answer_prefix="The special magic numbers for {keys} mentioned in the provided text are",
    template="ruler",
    answer_tokens=128,
)
TASK_PRESETS: dict[str, dict[str, Any]] = {
    "lwm_single": dict(),
    "lwm_multi": dict(
        needles=4,
        queries=4,
        question="What is the special magic number for {key}?",
        template="lwm_multi",
        answer_tokens=64,
        scoring="fraction",
    ),
    "multikey": dict(_RULER, needles=4, queries=1),
    "multivalue": dict(_RULER, needles=1, values_per_key=4, scoring="fraction"),
    "multiquery": dict(_RULER, needles=4, queries=4, scoring="fraction"),
    "variable_tracking": dict(
        kind="variable_tracking",
        needles=5,
        key_kind="var",
        value_kind="number",
        needle="VAR {key} = {value}",
        question="Question: Find all variables that are assigned the value {value} in the text above.",
        intro="Memorize and track the chain(s) of variable assignment hidden in the following text.\n",
        answer_prefix="Answer: According to the chain(s) of variable assignment in the text above, "
        "{count} variables are assigned the value {value}, they are: ",
        template="ruler",
        answer_tokens=64,
        scoring="fraction",
    ),
}


def task_preset(name: str, **overrides: Any) -> TaskConfig:
    """The named task with `overrides` applied.

    Raises:
      ValueError: for an unknown name (listing the known ones) or an invalid field.
    """
    if name not in TASK_PRESETS:
        raise ValueError(f"unknown needle task {name!r}; known: {list(TASK_PRESETS)}")
    return TaskConfig(**{"name": name, **TASK_PRESETS[name], **overrides})


@dataclass(frozen=True)
class Needle:
    """One needle sentence: its key, value and text, and the depth it is meant for (0..1)."""

    key: str
    value: str
    text: str
    depth: float


@dataclass(frozen=True)
class NeedleSet:
    """What one case hides and asks: needles in insertion order, and the template parts."""

    needles: list[Needle]
    question: str
    expected: list[str]
    intro: str = ""
    answer_prefix: str = ""
    asked: list[str] = field(default_factory=list)


def _fmt(s: str, **values: Any) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), s)


def make_needles(task: TaskConfig, rng: random.Random, depth: float = 0.5) -> NeedleSet:
    """Draws the needles, question and answers of one case.

    Args:
      task: the task.
      rng: the case's seeded generator (the same state gives the same needles).
      depth: requested depth (0..1) of the first asked needle.

    Returns:
      A NeedleSet whose needles carry their requested depths.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if task.kind == "variable_tracking":
        names = draw_keys("var", task.needles, rng)
        value = draw_values(task.value_kind, 1, rng)[0]
        later = sorted(depth + (1.0 - depth) * rng.random() for _ in range(task.needles - 1))
        texts = [_fmt(task.needle, key=names[0], value=value)]
        texts += [_fmt(task.needle, key=names[i], value=f"VAR {names[i - 1]}") for i in range(1, task.needles)]
        needles = [Needle(n, value, t, d) for n, t, d in zip(names, texts, [depth, *later], strict=True)]
        fill = dict(value=value, count=len(names))
        return NeedleSet(
            needles, _fmt(task.question, **fill), names, _fmt(task.intro, **fill), _fmt(task.answer_prefix, **fill),
            asked=[value],
        )
    keys = draw_keys(task.key_kind, task.needles, rng)
    values = draw_values(task.value_kind, task.needles * task.values_per_key, rng)
    asked = rng.sample(keys, task.queries)  # LWM: random.sample of the inserted cities
    first = asked[0]
    needles = []
    for i, key in enumerate(keys):
        for j in range(task.values_per_key):
            value = values[i * task.values_per_key + j]
            d = depth if key == first and j == 0 else rng.random()
            needles.append(Needle(key, value, _fmt(task.needle, key=key, value=value), d))
    by_key = {n.key: [m.value for m in needles if m.key == n.key] for n in needles}
    expected = [v for k in asked for v in by_key[k]]
    plural = task.queries > 1 or task.values_per_key > 1
    question = _fmt(task.question_plural if plural else task.question, key=first, keys=english_list(asked))
    fill = dict(keys=english_list(asked), key=first)
    return NeedleSet(needles, question, expected, _fmt(task.intro, **fill), _fmt(task.answer_prefix, **fill), asked)


@dataclass(frozen=True)
class Grid:
    """Context lengths (tokens, or frames for video) x needle depths (percent, 0..100)."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]

    def __post_init__(self):
        if not self.lengths or any(not isinstance(n, int) or n < 1 for n in self.lengths):
            raise ValueError(f"Grid.lengths={self.lengths}; allowed: a non-empty tuple of ints >= 1")
        if not self.depths or any(not 0 <= d <= 100 for d in self.depths):
            raise ValueError(f"Grid.depths={self.depths}; allowed: a non-empty tuple of percents in 0..100")


def _linspace(lo: float, hi: float, n: int) -> tuple[int, ...]:
    return tuple(int(x) for x in np.round(np.linspace(lo, hi, n)))


GRID_PRESETS: dict[str, Grid] = {
    "tiny": Grid((256, 512, 1024), (0, 50, 100)),
    "quick": Grid(_linspace(1000, 32000, 10), _linspace(0, 100, 10)),
    # LWM's eval_needle.py spacing (linspace lengths and depths, 20 x 20 as run_eval_needle.sh) up to 1M.
    "lwm_1m": Grid(_linspace(1000, 1_000_000, 20), _linspace(0, 100, 20)),
    # RULER's lengths; its 40 needle depths (niah.py DEPTHS).
    "ruler": Grid((4096, 8192, 16384, 32768, 65536, 131072), _linspace(0, 100, 40)),
}


def grid_preset(name: str) -> Grid:
    """The named grid. Raises ValueError listing the known ones."""
    if name not in GRID_PRESETS:
        raise ValueError(f"unknown grid {name!r}; known: {list(GRID_PRESETS)}")
    return GRID_PRESETS[name]
