"""One image-text pair -> one LWM training example: understanding or generation, templates, loss weights.

Each pair becomes one of two examples, chosen per pair by `choose_kind`: a stable hash of
(seed, pair key) compared with the generation fraction, so the choice never depends on the runner,
the order of records or which other pairs exist.

    understanding  vision then caption; loss on the caption tokens and EOS
    generation     caption then vision; loss on the whole vision field ("<vision>" tag tokens,
                   the codes with their <eof>/<eov>, "</vision>" tag tokens) and EOS

Everything else (BOS, template text, the other field) has weight 0. This is exactly LWM's
`[vision],caption` / `[caption],vision` field specs (lwm/data.py): `[field]` means "no loss", a
vision field's weight covers its tags, and EOS is appended with loss 1; so `lwm-pack export` writes
these examples as LWM lines that LWM's own loader turns back into the same tokens and weights.

Templates place the two fields among literal text: `{vision}` and `{caption}` each exactly once,
`{{`/`}}` for literal braces. Each part is tokenized on its own, as LWM tokenizes its fields, so
SentencePiece gives every part its usual leading-space piece: write no spaces around placeholders.
Presets: `lwm` (LWM's pretraining layout, no prompt text) and `lwm_chat` (the prompts of LWM's
vision_chat.py / vision_generation.py). BOS comes first (weight 0) and EOS last.

The record's `atomic_spans` cover the whole vision field ("<vision>" .. "</vision>"), so packing
never cuts an image.

Example, understanding with the `lwm` preset, caption "a red bus" (ids 9, 10, 11), tags "<vision>"
= [5, 6], "</vision>" = [7, 8], BOS 1, EOS 2:
    tokens       [1, 5, 6, c0..c255, 8193, 7, 8, 9, 10, 11, 2]
    vision_mask  [0, 0, 0, 1 x 257,        0, 0, 0,  0,  0, 0]
    loss_weights [0, 0, 0, 0 x 257,        0, 0, 1,  1,  1, 1]
    atomic_spans [(1, 262)]
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("understanding", "generation")
FIELDS = ("vision", "caption")
TEMPLATE_PRESETS: dict[str, tuple[str, str]] = {
    "lwm": ("{vision}{caption}", "{caption}{vision}"),
    "lwm_chat": (
        "You are a helpful assistant. USER: Describe the image.\n{vision} ASSISTANT:{caption}",
        "You are a helpful assistant. USER: Generate an image of{caption} ASSISTANT:{vision}",
    ),
}

Part = tuple[str, str]  # ("text", literal) or ("vision" | "caption", "")


def choose_kind(key: str, seed: int, generation_fraction: float) -> str:
    """'generation' if blake2b(seed, key) read as a number in [0, 1) is below the fraction, else 'understanding'."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2.0**64
    return "generation" if u < generation_fraction else "understanding"


def parse_template(template: str, kind: str) -> tuple[Part, ...]:
    """Splits a template into text and field parts.

    Raises:
      ValueError: naming the template, if a field is missing, repeated, unknown or formatted, or
        if the fields are in the wrong order for `kind` (understanding: vision first).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {list(KINDS)}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{kind}_template {template!r}: {e} (use {{{{ and }}}} for literal braces)") from e
    parts: list[Part] = []
    for literal, field, spec, conversion in parsed:
        if literal and parts and parts[-1][0] == "text":  # the parser splits text at {{ and }}
            parts[-1] = ("text", parts[-1][1] + literal)
        elif literal:
            parts.append(("text", literal))
        if field is None:
            continue
        if field not in FIELDS or spec or conversion:
            raise ValueError(
                f"{kind}_template {template!r}: unknown placeholder {{{field}}}; allowed: {{vision}}, {{caption}}"
            )
        parts.append((field, ""))
    order = [p[0] for p in parts if p[0] != "text"]
    if sorted(order) != sorted(FIELDS):
        raise ValueError(f"{kind}_template {template!r}: needs {{vision}} and {{caption}} exactly once each")
    expected = ["vision", "caption"] if kind == "understanding" else ["caption", "vision"]
    if order != expected:
        raise ValueError(f"{kind}_template {template!r}: {kind} puts {{{expected[0]}}} before {{{expected[1]}}}")
    return tuple(parts)


@dataclass(frozen=True)
class Templates:
    """The two templates; see the module docstring."""

    understanding: str = TEMPLATE_PRESETS["lwm"][0]
    generation: str = TEMPLATE_PRESETS["lwm"][1]

    def __post_init__(self):
        parse_template(self.understanding, "understanding")
        parse_template(self.generation, "generation")

    @classmethod
    def preset(cls, name: str) -> Templates:
        """A named preset.

        Raises:
          ValueError: listing the presets.
        """
        if name not in TEMPLATE_PRESETS:
            raise ValueError(f"templates: {name!r} is not one of {list(TEMPLATE_PRESETS)}")
        return cls(*TEMPLATE_PRESETS[name])

    def parts(self, kind: str) -> tuple[Part, ...]:
        return parse_template(self.understanding if kind == "understanding" else self.generation, kind)


@dataclass(frozen=True)
class Example:
    """One example's per-token arrays."""

    tokens: np.ndarray  # int32 [n]
    vision_mask: np.ndarray  # bool [n]
    loss_weights: np.ndarray  # float32 [n]
    atomic_spans: tuple[tuple[int, int], ...]


def assemble_example(
    kind: str,
    parts: tuple[Part, ...],
    text_ids: dict[str, np.ndarray],
    caption_ids: np.ndarray,
    vision_tokens: np.ndarray,
    vision_mask: np.ndarray,
    bos_id: int,
    eos_id: int,
) -> Example:
    """Lays out [BOS] parts... [EOS] with the weights of `kind` (see the module docstring).

    Args:
      kind: 'understanding' or 'generation'.
      parts: from `parse_template`.
      text_ids: token ids of each literal text part.
      caption_ids: the caption's ids (no BOS/EOS).
      vision_tokens, vision_mask: one vision field, as `tokenizers.vision.vision_field` gives it.
      bos_id, eos_id: the text tokenizer's special ids.
    """
    toks: list[np.ndarray] = [np.array([bos_id], np.int32)]
    masks: list[np.ndarray] = [np.zeros(1, bool)]
    weights: list[np.ndarray] = [np.zeros(1, np.float32)]
    spans: list[tuple[int, int]] = []
    n = 1
    for part, literal in parts:
        if part == "vision":
            t, m = np.asarray(vision_tokens, np.int32), np.asarray(vision_mask, bool)
            w = np.full(len(t), 1.0 if kind == "generation" else 0.0, np.float32)  # tags included
            spans.append((n, n + len(t)))
        elif part == "caption":
            t = np.asarray(caption_ids, np.int32)
            m = np.zeros(len(t), bool)
            w = np.full(len(t), 1.0 if kind == "understanding" else 0.0, np.float32)
        else:
            t = np.asarray(text_ids[literal], np.int32)
            m, w = np.zeros(len(t), bool), np.zeros(len(t), np.float32)
        toks.append(t)
        masks.append(m)
        weights.append(w)
        n += len(t)
    toks.append(np.array([eos_id], np.int32))
    masks.append(np.zeros(1, bool))
    weights.append(np.ones(1, np.float32))  # EOS, as LWM appends it
    return Example(np.concatenate(toks), np.concatenate(masks), np.concatenate(weights), tuple(spans))


class ExampleBuilder:
    """Turns (caption, VQGAN codes, kind) into an `Example` with a text tokenizer and templates.

    Picklable; the tokenized template text and tags are computed once per worker.
    """

    def __init__(self, text_tokenizer: Any, templates: Templates):
        self.text_tokenizer = text_tokenizer
        self.templates = templates
        self._cache: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

    def _prepared(self) -> dict[str, Any]:
        if self._cache is None:
            parts = {k: self.templates.parts(k) for k in KINDS}
            literals = sorted({lit for p in parts.values() for kind, lit in p if kind == "text"})
            ids = self.text_tokenizer.encode_batch(literals) if literals else []
            self._cache = {
                "parts": parts,
                "text_ids": {lit: np.asarray(i, np.int32) for lit, i in zip(literals, ids, strict=True)},
                "bos": int(self.text_tokenizer.bos_id),
                "eos": int(self.text_tokenizer.eos_id),
            }
        return self._cache

    def build(self, kind: str, caption: str, codes: np.ndarray) -> Example:
        """The example of one pair; `codes` are int [16, 16] (or [F, 16, 16]) VQGAN codes."""
        from lwmkit.tokenizers.vision import vision_field

        c = self._prepared()
        caption_ids = np.asarray(self.text_tokenizer.encode_batch([caption])[0], np.int32)
        tokens, mask = vision_field(codes, self.text_tokenizer)
        return assemble_example(kind, c["parts"][kind], c["text_ids"], caption_ids, tokens, mask, c["bos"], c["eos"])
