"""Needle cases: build them over a length x depth grid, write and read them as JSONL, rebuild prompts.

A case is one JSON object: what to ask and what counts as right, where the needles are, and a
`recipe` from which `rebuild_prompt` makes the prompt again byte for byte (the haystack spec and
its fingerprint, the units used, the partial cut, the needle slots, the template parts). The prompt
itself is stored too unless `include_prompt=False` (a 1M-token prompt is about 4 MB of JSON).

Lengths: `length` is the model's context for the case: BOS (if the template uses it) + the prompt
+ `answer_tokens` reserved for the answer. The prompt measures exactly `length - answer_tokens -
bos` tokens under the tokenizer given. Depths are percents of the haystack's tokens; `true_depth`
is where the first asked needle really went (haystack tokens before it / haystack tokens).

Example:
    >>> hay = Haystack.load(HaystackSpec(("book.txt",)))
    >>> case = build_case(hay, tok, task_preset("lwm_single"), length=4096, depth=50.0)
    >>> len(tok.encode(case["prompt"])) + 1 + case["answer_tokens"]      # BOS + prompt + answer room
    4096
    >>> rebuild_prompt(case["recipe"]) == case["prompt"]
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lwmkit.eval.fitting import TokenCounter, fit_context
from lwmkit.eval.haystack import Haystack, HaystackSpec
from lwmkit.eval.jsonl import json_lines
from lwmkit.eval.prompt_layout import Layout
from lwmkit.eval.tasks import TEMPLATES, Grid, NeedleSet, TaskConfig, make_needles

RECIPE_VERSION = 1


class CaseError(ValueError):
    """A case file or recipe is unreadable, or a rebuild does not reproduce the recorded prompt."""


def case_seed(seed: int, *parts: Any) -> int:
    """A stable 63-bit seed for one case (BLAKE2b of the global seed and the case's coordinates)."""
    text = "|".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def case_id(task: str, length: int, depth: float, round_: int) -> str:
    return f"{task}-L{length}-D{depth:g}-r{round_}"


def _primary(task: TaskConfig, ns: NeedleSet) -> int:
    if task.kind == "variable_tracking":
        return 0
    return next(i for i, n in enumerate(ns.needles) if n.key == ns.asked[0])


def build_case(
    hay: Haystack,
    tokenizer: Any,
    task: TaskConfig,
    length: int,
    depth: float,
    *,
    seed: int = 0,
    round_: int = 0,
    include_prompt: bool = True,
    max_tries: int = 6,
    allow_repeat: bool = False,
) -> dict[str, Any]:
    """One text case of exactly `length` tokens (see the module docstring).

    Args:
      hay: the haystack.
      tokenizer: the target model's text tokenizer (or a `TokenCounter` around it, to count calls).
      task: the task.
      length: context tokens: BOS + prompt + task.answer_tokens.
      depth: percent (0..100) of the haystack before the first asked needle.
      seed, round_: the same values give the same case.
      include_prompt: store the prompt in the case (else only its recipe and SHA-256).
      allow_repeat: a haystack smaller than the context is read more than once; the case records
        the repeated tokens and their share (`build.repeat_tokens`, `build.repeat_share`).

    Raises:
      HaystackTooSmall: if the context needs more text than the haystack holds and not allow_repeat.
      LengthFitError: if `length` cannot hold the template, needles and answer room.
    """
    if not 0 <= depth <= 100:
        raise ValueError(f"depth must be a percent in 0..100, got {depth}")
    t0, c0 = time.perf_counter(), time.process_time()
    counter = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
    calls0, tokens0 = counter.calls, counter.tokens
    cseed = case_seed(seed, task.name, length, depth, round_)
    rng = random.Random(cseed)
    start = rng.randrange(len(hay.units))
    ns = make_needles(task, rng, depth / 100)
    template = TEMPLATES[task.template]
    prefix, suffix = template.split(ns.question, ns.intro, ns.answer_prefix)
    target = length - task.answer_tokens - int(template.bos)
    fit = fit_context(
        hay,
        counter,
        prefix=prefix,
        suffix=suffix,
        needles=[n.text for n in ns.needles],
        depths=[n.depth for n in ns.needles],
        target=target,
        start=start,
        max_tries=max_tries,
        allow_repeat=allow_repeat,
    )
    primary = _primary(task, ns)
    lay = fit.layout
    case: dict[str, Any] = {
        "id": case_id(task.name, length, depth, round_),
        "modality": "text",
        "task": task.name,
        "length": length,
        "depth": float(depth),
        "true_depth": round(100 * fit.true_depths[primary], 3),
        "round": round_,
        "haystack_tokens": fit.haystack_tokens,
        "prompt_tokens": fit.tokens + int(template.bos),
        "answer_tokens": task.answer_tokens,
        "bos": template.bos,
        "question": ns.question,
        "expected": ns.expected,
        "scoring": task.scoring,
        "needles": [
            {
                "key": n.key,
                "value": n.value,
                "text": n.text,
                "depth": round(100 * n.depth, 3),
                "true_depth": round(100 * fit.true_depths[i], 3),
                "char_offset": fit.char_offsets[i],
                "token_offset": fit.token_offsets[i],
            }
            for i, n in enumerate(ns.needles)
        ],
        "seed": cseed,
        "tokenizer": counter.key,
        "prompt_sha256": hashlib.sha256(fit.prompt.encode("utf-8")).hexdigest(),
        "recipe": {
            "version": RECIPE_VERSION,
            "haystack": hay.spec.to_json(),
            "haystack_fingerprint": hay.fingerprint,
            "start": lay.start,
            "units": lay.units,
            "partial": list(lay.partial) if lay.partial else None,
            "slots": lay.slots,
            "needles": lay.needles,
            "prefix": lay.prefix,
            "suffix": lay.suffix,
        },
        "build": {
            "seconds": round(time.perf_counter() - t0, 4),
            "cpu_seconds": round(time.process_time() - c0, 4),
            "tokenizer_calls": counter.calls - calls0,
            "tokens_encoded": counter.tokens - tokens0,
            "tries": fit.tries,
            "join_mode": fit.mode,
            "haystack_wrapped": lay.units + (lay.partial is not None) > len(hay.units),
            "repeat_tokens": fit.repeat_tokens,
            "repeat_share": round(fit.repeat_tokens / fit.haystack_tokens, 6) if fit.haystack_tokens else 0.0,
        },
    }
    if include_prompt:
        case["prompt"] = fit.prompt
    return case


def build_cases(
    hay: Haystack,
    tokenizer: Any,
    task: TaskConfig,
    grid: Grid,
    *,
    rounds: int = 1,
    seed: int = 0,
    include_prompt: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    allow_repeat: bool = False,
) -> Iterator[dict[str, Any]]:
    """Cases for every length x depth x round of `grid`, shortest lengths first (`build_case`)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    counter = tokenizer if isinstance(tokenizer, TokenCounter) else TokenCounter(tokenizer)
    for length in sorted(grid.lengths):
        for depth in grid.depths:
            for r in range(rounds):
                case = build_case(
                    hay, counter, task, length, float(depth), seed=seed, round_=r, include_prompt=include_prompt,
                    allow_repeat=allow_repeat,
                )
                if progress:
                    progress(case)
                yield case


def rebuild_prompt(recipe: dict[str, Any], tokenizer: Any = None, expect_sha256: str | None = None) -> str:
    """The prompt a recipe describes, byte for byte.

    Args:
      recipe: a case's `recipe`.
      tokenizer: decodes document-shard haystacks (the tokenizer they were made with).
      expect_sha256: the case's `prompt_sha256`; a mismatch raises.

    Raises:
      CaseError: if the haystack changed since the case was built, or the prompt differs.
    """
    if recipe.get("version") != RECIPE_VERSION:
        raise CaseError(f"recipe version {recipe.get('version')!r}; this lwmkit reads {RECIPE_VERSION}")
    hay = Haystack.load(HaystackSpec.from_json(recipe["haystack"]), tokenizer)
    if hay.fingerprint != recipe["haystack_fingerprint"]:
        raise CaseError(
            f"haystack {recipe['haystack']['sources']} changed since the case was built "
            f"(fingerprint {hay.fingerprint[:12]}…, recipe {recipe['haystack_fingerprint'][:12]}…)"
        )
    partial = tuple(recipe["partial"]) if recipe["partial"] else None
    r = recipe
    layout = Layout(r["prefix"], r["suffix"], list(r["needles"]), r["start"], r["units"], partial, list(r["slots"]))
    prompt, _ = layout.render(hay)
    if expect_sha256 and hashlib.sha256(prompt.encode("utf-8")).hexdigest() != expect_sha256:
        raise CaseError("the rebuilt prompt's SHA-256 differs from the case's prompt_sha256")
    return prompt


def case_prompt(case: dict[str, Any], tokenizer: Any = None) -> str:
    """A text case's prompt: stored, or rebuilt from its recipe."""
    if "prompt" in case:
        return case["prompt"]
    return rebuild_prompt(case["recipe"], tokenizer, case.get("prompt_sha256"))


def write_cases(cases: Iterable[dict[str, Any]], path: str) -> int:
    """Writes cases as JSONL (atomically: a temporary file renamed into place). Returns the count."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for case in cases:
                f.write(json.dumps(case, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return n


def read_cases(path: str) -> list[dict[str, Any]]:
    """Reads a cases JSONL file.

    Raises:
      CaseError: naming the file and line of a row that is not a case.
    """
    cases = []
    for i, case in json_lines(path, CaseError):
        missing = [k for k in ("id", "task", "expected", "scoring") if k not in case]
        if missing:
            raise CaseError(f"{path}:{i}: not a needle case (missing {missing})")
        cases.append(case)
    ids = [c["id"] for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise CaseError(f"{path}: duplicate case ids {dup}")
    return cases
