"""One video with its text -> one LWM example: understanding, generation or chat, cuttable between frames.

Kinds (a video with question/answer turns is always `chat`; a captioned one is understanding or
generation by `image_examples.choose_kind`, a stable hash of (seed, key)):

    understanding  video then caption; loss on the caption and EOS (as image_examples)
    generation     caption then video; loss on the whole vision field (tags, codes, <eof>s, <eov>) and EOS
    chat           video, then the turns; loss on answer tokens and the final EOS, as LWM's processors
                   train it (BOS, template text, the video and questions get 0; the template's
                   `final_eos_loss=False` gives the EOS 0 too)

Understanding and generation are exactly the image job's examples with F frames in the vision
field (`image_examples.ExampleBuilder`), so `lwm-pack export` writes them as LWM lines. Chat turns
come from two templates, tokenized part by part like `qa_assembly` (write no spaces around
placeholders): `first_turn` holds {vision}, {question}, {answer} in that order, `next_turn`
{question}, {answer}.

Atomic spans: one per frame, so packing may cut a long video only between frames. The first frame's
span reaches back over the "<vision>" tag tokens and the last one's forward over "</vision>", so a
tag never travels alone. Each chat turn is a span too (from the end of the video, or the turn's
start, to the end of its answer and any text after it), so a cut never separates an answer from its
question.

Example, understanding, 2 frames, caption ids [9, 10], "<vision>" = [5, 6], "</vision>" = [7, 8],
BOS 1, EOS 2:
    tokens       [1, 5, 6, c0 x256, 8192, c1 x256, 8193, 7, 8, 9, 10, 2]
    vision_mask  [0, 0, 0, 1 x 514,                   0, 0, 0,  0, 0]
    loss_weights [0, 0, 0, 0 x 514,                   0, 0, 1,  1, 1]
    atomic_spans [(1, 260), (260, 519)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lwmkit.pipelines.examples.vision_text import KINDS as CAPTION_KINDS
from lwmkit.pipelines.examples.vision_text import Example, ExampleBuilder, Templates, choose_kind
from lwmkit.pipelines.qa.assembly import parse_turn
from lwmkit.tokenizers.vision import TOKENS_PER_FRAME, vision_field, vision_tags

KINDS = (*CAPTION_KINDS, "chat")
FIRST_TURN = "You are a helpful assistant. USER:{vision}{question}ASSISTANT:{answer}"
NEXT_TURN = "USER:{question}ASSISTANT:{answer}"
VIDEO_TEMPLATE_PRESETS: dict[str, tuple[str, str, str, str]] = {
    "lwm": ("{vision}{caption}", "{caption}{vision}", FIRST_TURN, NEXT_TURN),
    "lwm_chat": (
        "You are a helpful assistant. USER: Describe the video.\n{vision} ASSISTANT:{caption}",
        "You are a helpful assistant. USER: Generate a video of{caption} ASSISTANT:{vision}",
        FIRST_TURN,
        NEXT_TURN,
    ),
}


@dataclass(frozen=True)
class VideoTemplates:
    """The templates of the three kinds; see the module docstring."""

    understanding: str = VIDEO_TEMPLATE_PRESETS["lwm"][0]
    generation: str = VIDEO_TEMPLATE_PRESETS["lwm"][1]
    first_turn: str = FIRST_TURN
    next_turn: str = NEXT_TURN
    final_eos_loss: bool = True  # chat: train the EOS after the last answer, as LWM does

    def __post_init__(self):
        self.caption_templates()  # raises ValueError naming the template
        parse_turn(self.first_turn, "first_turn", ("vision", "question", "answer"))
        parse_turn(self.next_turn, "next_turn", ("question", "answer"))

    @classmethod
    def preset(cls, name: str, final_eos_loss: bool = True) -> VideoTemplates:
        """A named preset ('lwm' or 'lwm_chat').

        Raises:
          ValueError: listing the presets.
        """
        if name not in VIDEO_TEMPLATE_PRESETS:
            raise ValueError(f"templates: {name!r} is not one of {list(VIDEO_TEMPLATE_PRESETS)}")
        return cls(*VIDEO_TEMPLATE_PRESETS[name], final_eos_loss=final_eos_loss)

    def caption_templates(self) -> Templates:
        return Templates(self.understanding, self.generation)


def video_kind(key: str, has_turns: bool, seed: int, generation_fraction: float) -> str:
    """'chat' for a video with turns, else `choose_kind` (understanding or generation)."""
    return "chat" if has_turns else choose_kind(key, seed, generation_fraction)


def frame_spans(start: int, frames: int, head: int, tail: int) -> list[tuple[int, int]]:
    """Atomic spans of a vision field at `start` with `head` + 257 x frames + `tail` tokens.

    >>> frame_spans(1, 2, 2, 2)
    [(1, 260), (260, 519)]
    """
    if frames < 1:
        raise ValueError(f"frames: {frames} must be >= 1")
    first = start + head
    spans = [(first + TOKENS_PER_FRAME * i, first + TOKENS_PER_FRAME * (i + 1)) for i in range(frames)]
    spans[0] = (start, spans[0][1])
    spans[-1] = (spans[-1][0], spans[-1][1] + tail)
    return spans


class VideoExampleBuilder:
    """Turns (kind, VQGAN codes [F, 16, 16], caption or turns) into an `Example`.

    Picklable; template and tag tokens are computed once per worker.
    """

    def __init__(self, text_tokenizer: Any, templates: VideoTemplates):
        self.text_tokenizer = text_tokenizer
        self.templates = templates
        self.captions = ExampleBuilder(text_tokenizer, templates.caption_templates())
        self._cache: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

    def _prepared(self) -> dict[str, Any]:
        if self._cache is None:
            first = parse_turn(self.templates.first_turn, "first_turn", ("vision", "question", "answer"))
            nxt = parse_turn(self.templates.next_turn, "next_turn", ("question", "answer"))
            enc = self.text_tokenizer.encode_batch(list(first + nxt))
            ids = [np.asarray(x if t else [], np.int32) for t, x in zip(first + nxt, enc, strict=True)]
            start, end = vision_tags(self.text_tokenizer)
            self._cache = {
                "first": ids[:4],
                "next": ids[4:],
                "tags": (len(start), len(end)),
                "bos": int(self.text_tokenizer.bos_id),
                "eos": int(self.text_tokenizer.eos_id),
            }
        return self._cache

    def build(
        self, kind: str, codes: np.ndarray, caption: str | None = None, turns: Sequence[Sequence[str]] | None = None
    ) -> Example:
        """The example of one video.

        Args:
          kind: one of KINDS.
          codes: int [F, 16, 16] VQGAN codes of the sampled frames.
          caption: the caption (understanding, generation).
          turns: [question, answer] pairs (chat).

        Raises:
          ValueError: for an unknown kind, or missing caption / turns.
        """
        c = self._prepared()
        frames = int(np.shape(codes)[0])
        head, tail = c["tags"]
        if kind in CAPTION_KINDS:
            if caption is None:
                raise ValueError(f"{kind} needs a caption")
            ex = self.captions.build(kind, caption, codes)
            (start, end), = ex.atomic_spans
            spans = frame_spans(start, frames, head, tail)
            if spans[-1][1] != end:
                raise AssertionError(f"vision field [{start}, {end}) is not {frames} frames plus tags")
            return Example(ex.tokens, ex.vision_mask, ex.loss_weights, tuple(spans))
        if kind != "chat":
            raise ValueError(f"kind: {kind!r} is not one of {list(KINDS)}")
        if not turns:
            raise ValueError("chat needs at least one [question, answer] turn")
        return self._chat(codes, frames, turns, c)

    def _chat(self, codes, frames: int, turns, c) -> Example:
        field, field_mask = vision_field(codes, self.text_tokenizer)
        enc = self.text_tokenizer.encode_batch([t for qa in turns for t in qa])
        first, nxt = c["first"], c["next"]
        parts: list[np.ndarray] = [np.array([c["bos"]], np.int32), first[0]]
        n = 1 + len(first[0])
        spans = frame_spans(n, frames, *c["tags"])
        parts.append(field)
        n += len(field)
        answers: list[tuple[int, int]] = []
        for k in range(len(turns)):
            q, a = np.asarray(enc[2 * k], np.int32), np.asarray(enc[2 * k + 1], np.int32)
            before_q, before_a, after_a = (first[1], first[2], first[3]) if k == 0 else tuple(nxt)
            start = n
            parts += [before_q, q, before_a]
            n += len(before_q) + len(q) + len(before_a)
            answers.append((n, n + len(a)))
            parts += [a, after_a]
            n += len(a) + len(after_a)
            if n > start:
                spans.append((start, n))
        parts.append(np.array([c["eos"]], np.int32))
        tokens = np.concatenate(parts).astype(np.int32)
        mask = np.zeros(len(tokens), bool)
        mask[1 + len(first[0]) : 1 + len(first[0]) + len(field)] = field_mask
        weights = np.zeros(len(tokens), np.float32)
        for a, b in answers:
            weights[a:b] = 1.0
        weights[-1] = 1.0 if self.templates.final_eos_loss else 0.0
        return Example(tokens, mask, weights, tuple(spans))
