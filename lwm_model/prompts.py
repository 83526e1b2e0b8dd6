"""LWM's inference prompt layouts as token ids: vision chat, text chat, and image/video generation.

The layouts are LWM's own (`lwm/vision_chat.py`, `lwm/vision_generation.py`). LWM writes `<s>` at
the start of each template string and tokenizes the rest without adding BOS, so here `<s>` is the
tokenizer's BOS id followed by ids(the rest of the string). Vision fields come in already laid
out (`lwmkit.tokenizers.vision.vision_field`: ids("<vision>"), frames of 256 codes + <eof>, the
last ending in <eov>, ids("</vision>")), since this package does not import the tokenizers.

    vision chat   [BOS] ids("You are a helpful assistant. USER: {question}\\n") <vision field>
                  ids(" ASSISTANT:")
    text chat     [BOS] ids("You are a helpful assistant. USER: {context} {question} ASSISTANT:")
                  (no context: "... USER: {question} ASSISTANT:")
    image prompt  [BOS] ids("You are a helpful assistant. USER: Generate an image of {prompt} ASSISTANT: <vision>")
    video prompt  [BOS] ids("You are a helpful assistant. USER: Generate a video of {prompt} ASSISTANT: <vision>")
                  then the first frame's 256 codes and <eof> (vision ids) when continuing a video
    unconditional [BOS] ids("<vision>")   (classifier-free guidance's prompt; LWM's "<s><vision>")

Example:
    >>> field = TokenSeq(*vision_field(codes, tok))          # codes [F, 16, 16]
    >>> p = vision_chat_prompt(tok, "What is in the image?", field)
    >>> p.tokens[:1], p.vision_mask.sum()                    # [BOS], 257 F vision ids
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

SYSTEM = "You are a helpful assistant."
CHAT_PREFIX = SYSTEM + " USER: {question}\n"  # lwm/vision_chat.py, after "<s>"
CHAT_SUFFIX = " ASSISTANT:"
TEXT_CHAT = SYSTEM + " USER: {question} ASSISTANT:"
TEXT_CHAT_WITH_CONTEXT = SYSTEM + " USER: {context} {question} ASSISTANT:"
IMAGE_PROMPT = SYSTEM + " USER: Generate an image of {prompt} ASSISTANT: <vision>"  # lwm/vision_generation.py
VIDEO_PROMPT = SYSTEM + " USER: Generate a video of {prompt} ASSISTANT: <vision>"
UNCONDITIONAL_PROMPT = "<vision>"
GENERATION_KINDS = {"image": IMAGE_PROMPT, "video": VIDEO_PROMPT}


class TextEncoder(Protocol):
    """What the layouts need of a text tokenizer (lwmkit's SentencePieceTokenizer has it)."""

    @property
    def bos_id(self) -> int: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...


@dataclass(frozen=True, eq=False)
class TokenSeq:
    """One sequence: tokens int32 [n] (text or vision ids) and vision_mask bool [n] (True = vision id).

    Raises:
      ValueError: if tokens and vision_mask are not 1-D of one length.
    """

    tokens: np.ndarray
    vision_mask: np.ndarray

    def __post_init__(self) -> None:
        tokens, mask = np.asarray(self.tokens), np.asarray(self.vision_mask)
        if tokens.ndim != 1 or tokens.shape != mask.shape:
            raise ValueError(f"TokenSeq: tokens {tokens.shape} and vision_mask {mask.shape} must be 1-D and equal")
        object.__setattr__(self, "tokens", tokens.astype(np.int32))
        object.__setattr__(self, "vision_mask", mask.astype(bool))

    @classmethod
    def text(cls, ids: Sequence[int]) -> TokenSeq:
        return cls(np.asarray(ids, np.int32).reshape(-1), np.zeros(len(ids), bool))

    @classmethod
    def vision(cls, ids: Sequence[int] | np.ndarray) -> TokenSeq:
        ids = np.asarray(ids, np.int32).reshape(-1)
        return cls(ids, np.ones(len(ids), bool))

    def __add__(self, other: TokenSeq) -> TokenSeq:
        return TokenSeq(
            np.concatenate([self.tokens, other.tokens]), np.concatenate([self.vision_mask, other.vision_mask])
        )

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def _text(tokenizer: TextEncoder, text: str, bos: bool = False) -> TokenSeq:
    ids = [int(i) for i in tokenizer.encode_batch([text])[0]]
    return TokenSeq.text(([int(tokenizer.bos_id)] if bos else []) + ids)


def _check_field(field: TokenSeq) -> TokenSeq:
    if not field.vision_mask.any():
        raise ValueError("vision field holds no vision tokens (vision_mask is all False)")
    return field


def vision_chat_prompt(tokenizer: TextEncoder, question: str, field: TokenSeq) -> TokenSeq:
    """LWM's vision chat prompt: the question, then one vision field (an image or a video), then the answer cue.

    Args:
      tokenizer: the text tokenizer (BOS id and `encode_batch` without BOS/EOS).
      question: the user's question.
      field: one vision field as `vision_field` lays it out (tags, frames, <eof>/<eov>).

    Raises:
      ValueError: if the field has no vision tokens.
    """
    head = _text(tokenizer, CHAT_PREFIX.format(question=question), bos=True)
    return head + _check_field(field) + _text(tokenizer, CHAT_SUFFIX)


def text_chat_prompt(tokenizer: TextEncoder, question: str, context: str = "") -> TokenSeq:
    """LWM's text chat prompt, with an optional long context (a document) before the question."""
    if context:
        return _text(tokenizer, TEXT_CHAT_WITH_CONTEXT.format(context=context, question=question), bos=True)
    return _text(tokenizer, TEXT_CHAT.format(question=question), bos=True)


def generation_prompt(tokenizer: TextEncoder, prompt: str, kind: str = "image") -> TokenSeq:
    """The conditional prompt that makes LWM draw `prompt`: kind "image" (the first frame) or "video".

    Raises:
      ValueError: for an unknown kind.
    """
    if kind not in GENERATION_KINDS:
        raise ValueError(f"generation kind {kind!r}; allowed: {list(GENERATION_KINDS)}")
    return _text(tokenizer, GENERATION_KINDS[kind].format(prompt=prompt), bos=True)


def unconditional_prompt(tokenizer: TextEncoder) -> TokenSeq:
    """Classifier-free guidance's unconditional prompt: LWM's "<s><vision>"."""
    return _text(tokenizer, UNCONDITIONAL_PROMPT, bos=True)


def frame_tokens(codes: np.ndarray, eof_id: int) -> TokenSeq:
    """Frames as generated vision tokens: each frame's codes then `eof_id` (LWM ends every generated
    frame, the last included, with <eof>).

    Args:
      codes: int [F, 16, 16] or [F, 256].
      eof_id: the model's <eof> vision id.
    """
    codes = np.asarray(codes, np.int32)
    flat = codes.reshape(codes.shape[0], -1)  # [F, 256]
    body = np.concatenate([flat, np.full((flat.shape[0], 1), eof_id, np.int32)], axis=1)  # [F, 257]
    return TokenSeq.vision(body.reshape(-1))
