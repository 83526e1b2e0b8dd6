"""Video needles: a needle image, as VQGAN frames, hidden at a depth in a long video token stream.

The haystack is any video the user tokenized with lwmkit's video pipeline (a dataset directory of
document records with vision fields; their frames are read in record order), or seeded random
frames (`VideoHaystackSpec("generated", ...)`), which is what tests use. The needle is an image
encoded with the VQGAN (`needle_from_image`), optionally repeated for several frames. The prompt is
LWM's vision-chat layout (lwm/vision_chat.py), the question before the video:

    [BOS] ids("You are a helpful assistant. USER: {question}\\n")
          ids("<vision>") f_0 <eof> ... needle <eof> ... f_n <eov> ids("</vision>")   (one vision field)
          ids(" ASSISTANT:")

Video lengths are counted in haystack frames (each costs 257 tokens; `prompt_tokens` records the
exact total). With options the question is multiple choice (options shuffled per case, scored by
letter); without, a short answer scored by substring. The recipe stores the text ids and needle
codes, so `video_prompt` rebuilds the exact token prompt without a tokenizer or a VQGAN.

Example:
    >>> hay = VideoHaystack.load(VideoHaystackSpec("generated", frames=64, seed=0))
    >>> needle = VideoNeedle(codes, "What is hidden in the video?", ("a red square", "a blue circle"), "a red square")
    >>> case = build_video_case(hay, tok, needle, frames=32, depth=50.0)
    >>> case["needles"][0]["frame_index"], case["expected"]   # options shuffled per case
    (16, ['A'])
    >>> video_prompt(case).tokens.shape                        # BOS + text + 33 x 257 + tags + text
    (8560,)
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import string
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from lwmkit.eval.backends import TokenPrompt
from lwmkit.eval.cases import CaseError, case_id, case_seed
from lwmkit.tokenizers.vision import (
    CODE_GRID,
    EOF_ID,
    EOV_ID,
    NUM_CODES,
    TOKENS_PER_FRAME,
    VISION_END,
    VISION_START,
    frame_codes,
)

VIDEO_RECIPE_VERSION = 1
VIDEO_PREFIX = "You are a helpful assistant. USER: {question}\n"
VIDEO_SUFFIX = " ASSISTANT:"
CHOICE_SUFFIX = "Answer with the option's letter."
_CACHE: dict[str, VideoHaystack] = {}


@dataclass(frozen=True)
class VideoHaystackSpec:
    """Where the haystack frames come from.

    Attributes:
      source: "generated", or a dataset directory of lwmkit document records with vision fields.
      seed: seeds the generated frames.
      frames: how many frames to generate.
      codes: generated codes lie in 0..codes-1 (8192 for LWM's VQGAN; smaller for a tiny model).
    """

    source: str
    seed: int = 0
    frames: int = 4096
    codes: int = NUM_CODES

    def __post_init__(self):
        if not self.source:
            raise ValueError("VideoHaystackSpec.source is empty; allowed: 'generated' or a dataset directory")
        if not 1 <= self.frames <= 1_000_000:
            raise ValueError(f"VideoHaystackSpec.frames={self.frames}; allowed: 1..1000000")
        if not 2 <= self.codes <= NUM_CODES:
            raise ValueError(f"VideoHaystackSpec.codes={self.codes}; allowed: 2..{NUM_CODES}")


class VideoHaystack:
    """Frames int32 [N, 16, 16] and their fingerprint (SHA-256 of the array bytes).

    `videos` holds (name, first frame, frame count) of each source video, in order, covering the
    frames; `encoders` the `tokenizer` and `vqgan` fingerprints a dataset's manifest records.
    """

    def __init__(
        self, spec: VideoHaystackSpec, frames: np.ndarray, videos: list[tuple[str, int, int]] | None = None,
        encoders: dict[str, Any] | None = None,
    ):  # fmt: skip
        if frames.ndim != 3 or frames.shape[1:] != (CODE_GRID, CODE_GRID) or not len(frames):
            raise ValueError(f"video haystack {spec.source}: frames must be [N>0, 16, 16], got {frames.shape}")
        self.spec = spec
        self.frames = np.ascontiguousarray(frames, dtype=np.int32)
        self.fingerprint = hashlib.sha256(self.frames.tobytes()).hexdigest()
        self.videos = videos or [(spec.source, 0, len(frames))]
        self.encoders = encoders or {}

    def spans(self, start: int, count: int) -> list[dict[str, Any]]:
        """The source videos frames start..start+count-1 (read cyclically) come from, in order:
        [{"video": name, "first_frame": i, "frames": k}, ...] (first_frame within that video)."""
        out: list[dict[str, Any]] = []
        n, pos, left = len(self.frames), start % len(self.frames), count
        while left > 0:
            name, first, size = next(v for v in self.videos if v[1] <= pos < v[1] + v[2])
            take = min(left, first + size - pos)
            out.append({"video": name, "first_frame": pos - first, "frames": take})
            pos, left = (pos + take) % n, left - take
        return out

    @classmethod
    def load(cls, spec: VideoHaystackSpec) -> VideoHaystack:
        key = repr(spec)
        if key in _CACHE:
            return _CACHE[key]
        if spec.source == "generated":
            rng = np.random.default_rng(spec.seed)
            frames = rng.integers(0, spec.codes, size=(spec.frames, CODE_GRID, CODE_GRID), dtype=np.int32)
            hay = cls(spec, frames)
        else:
            hay = _dataset_haystack(spec)
        _CACHE.clear()
        _CACHE[key] = hay
        return hay


def _dataset_haystack(spec: VideoHaystackSpec) -> VideoHaystack:
    from lwmkit.eval.encoders import recorded
    from lwmkit.packing.source import ShardDataSource

    directory = spec.source
    source = ShardDataSource(directory)
    if source.kind != "document":
        raise CaseError(f"{directory}: a video haystack needs document records, this dataset is {source.kind!r}")
    frames: list[np.ndarray] = []
    videos: list[tuple[str, int, int]] = []
    for i in range(len(source)):
        rec = source[i]
        try:
            got = frame_codes(rec["tokens"], rec["vision_mask"])
        except ValueError as e:
            raise CaseError(f"{directory}: record {i}: {e}") from e
        if got:
            videos.append((f"{rec.get('source_file', directory)}:{rec.get('source_line', i + 1)}", len(frames), len(got)))
            frames += got
    if not frames:
        raise CaseError(f"{directory}: no vision frames in any record")
    encoders = {k: recorded(directory, k) for k in ("tokenizer", "vqgan")}
    return VideoHaystack(spec, np.stack(frames), videos, {k: v for k, v in encoders.items() if v})


@dataclass(frozen=True)
class VideoNeedle:
    """The needle: its frames' codes [F, 16, 16], a question, options (empty = short answer), answer.

    `answer` is one of `options` for multiple choice, else the expected short answer text.
    """

    codes: np.ndarray
    question: str
    options: tuple[str, ...]
    answer: str
    name: str = "video_needle"
    vqgan: dict[str, Any] | None = None

    def __post_init__(self):
        codes = np.asarray(self.codes)
        if codes.ndim == 2:
            codes = codes[None]
        if codes.ndim != 3 or codes.shape[1:] != (CODE_GRID, CODE_GRID) or not len(codes):
            raise ValueError(f"VideoNeedle.codes must be [F>0, 16, 16], got {codes.shape}")
        object.__setattr__(self, "codes", codes.astype(np.int32))
        object.__setattr__(self, "options", tuple(self.options))
        if self.options and self.answer not in self.options:
            raise ValueError(f"VideoNeedle.answer={self.answer!r} is not one of the options {list(self.options)}")
        if self.options and not 2 <= len(self.options) <= 26:
            raise ValueError(f"VideoNeedle.options has {len(self.options)}; allowed: 2..26 (or none)")
        if len(set(self.options)) != len(self.options):
            raise ValueError(f"VideoNeedle.options repeat: {list(self.options)}")


def needle_from_image(
    image: bytes, image_tokenizer: Any, *, question: str, options: tuple[str, ...] = (), answer: str,
    frames: int = 1, name: str = "video_needle",
) -> VideoNeedle:  # fmt: skip
    """Encodes an image (file bytes; LWM's preprocessing) with the VQGAN into a needle of `frames` frames.

    The needle records the VQGAN (`encoders.vqgan_record`); a random one also prints
    `encoders.random_vqgan_warning` on stderr.
    """
    from lwmkit.eval.encoders import random_vqgan_warning, vqgan_record
    from lwmkit.tokenizers.vision import load_image

    record = vqgan_record(image_tokenizer)
    if record["random_init"]:
        print(f"WARNING: {random_vqgan_warning(record['preset'], record.get('seed'))}", file=sys.stderr, flush=True)
    codes = np.asarray(image_tokenizer.encode(load_image(image, name=name)[None]), np.int32)  # [1, 16, 16]
    return VideoNeedle(np.repeat(codes, frames, axis=0), question, options, answer, name, record)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer.encode_batch([text])[0]]


def build_video_case(
    hay: VideoHaystack,
    tokenizer: Any,
    needle: VideoNeedle,
    frames: int,
    depth: float,
    *,
    seed: int = 0,
    round_: int = 0,
    answer_tokens: int = 16,
    allow_repeat: bool = False,
) -> dict[str, Any]:
    """One video case: `frames` haystack frames with the needle's frames inserted at `depth` percent.

    The frames are one contiguous run of the haystack (its videos in order, each video's frames in
    order; `videos` names the source videos it spans), from a start drawn so it never runs past the
    haystack's end. A haystack shorter than `frames` is an error, or with `allow_repeat` read again
    from its first frame (`repeat_frames`, `repeat_share` record how much).

    Raises:
      ValueError: for a depth outside 0..100 or frames < 1.
      CaseError: if the haystack is shorter than `frames` and not allow_repeat.
      EncoderMismatch: if the needle's VQGAN or `tokenizer` is not the one the haystack records.
    """
    if not 0 <= depth <= 100:
        raise ValueError(f"depth must be a percent in 0..100, got {depth}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    check_video_encoders(hay, tokenizer, needle)
    n = len(hay.frames)
    if frames > n and not allow_repeat:
        raise CaseError(
            f"video haystack {hay.spec.source} holds {n} frames; a case of {frames} frames would repeat "
            f"{frames - n} of them: use shorter lengths, a longer haystack, or --allow-repeat (each case then "
            "records its repeated share)"
        )
    cseed = case_seed(seed, needle.name, frames, depth, round_)
    rng = random.Random(cseed)
    start = rng.randrange(n - frames + 1) if frames <= n else rng.randrange(n)
    repeat = max(0, frames - n)
    insert = int(round(depth / 100 * frames))
    question = needle.question
    if needle.options:
        options = list(needle.options)
        rng.shuffle(options)
        letters = string.ascii_uppercase[: len(options)]
        question += "\n" + "\n".join(f"({a}) {o}" for a, o in zip(letters, options, strict=True)) + "\n" + CHOICE_SUFFIX
        expected, scoring = [letters[options.index(needle.answer)]], "choice"
    else:
        expected, scoring = [needle.answer], "substring"
    tags = tokenizer.encode_batch([VISION_START, VISION_END])
    recipe = {
        "version": VIDEO_RECIPE_VERSION,
        "haystack": _spec_json(hay.spec),
        "haystack_fingerprint": hay.fingerprint,
        "start": start,
        "frames": frames,
        "insert": insert,
        "needle_codes": needle.codes.reshape(len(needle.codes), -1).tolist(),
        "bos_id": int(tokenizer.bos_id),
        "prefix_ids": _ids(tokenizer, VIDEO_PREFIX.format(question=question)),
        "vision_start_ids": [int(i) for i in tags[0]],
        "vision_end_ids": [int(i) for i in tags[1]],
        "suffix_ids": _ids(tokenizer, VIDEO_SUFFIX),
    }
    prompt = _render(recipe, hay)
    first_code = 1 + len(recipe["prefix_ids"]) + len(recipe["vision_start_ids"]) + insert * TOKENS_PER_FRAME
    return {
        "id": case_id(needle.name, frames, depth, round_),
        "modality": "video",
        "task": needle.name,
        "length": frames,
        "depth": float(depth),
        "true_depth": round(100 * insert / frames, 3),
        "round": round_,
        "prompt_tokens": int(len(prompt.tokens)),
        "answer_tokens": answer_tokens,
        "bos": True,
        "question": question,
        "expected": expected,
        "scoring": scoring,
        "needles": [{"frames": len(needle.codes), "frame_index": insert, "token_offset": first_code}],
        "videos": hay.spans(start, frames),
        "repeat_frames": repeat,
        "repeat_share": round(repeat / frames, 6),
        "needle_vqgan": needle.vqgan,
        "seed": cseed,
        "tokenizer": _fingerprint(tokenizer),
        "prompt_sha256": prompt_sha256(prompt),
        "recipe": recipe,
    }


def _spec_json(spec: VideoHaystackSpec) -> dict[str, Any]:
    """The haystack spec a recipe records: a dataset is its directory alone (frames, codes and seed
    describe only a generated haystack)."""
    if spec.source == "generated":
        return dataclasses.asdict(spec)
    return {"source": spec.source}


def check_video_encoders(hay: VideoHaystack, tokenizer: Any, needle: VideoNeedle) -> None:
    """Refuses a needle whose VQGAN, or a text tokenizer that, is not the one the haystack records.

    Raises:
      EncoderMismatch: naming the haystack and both fingerprints.
    """
    from lwmkit.eval.encoders import EncoderMismatch, check_tokenizer, describe

    source = hay.spec.source
    check_tokenizer(source, hay.encoders, tokenizer, "the prompt's text ids would not be the model's")
    want = hay.encoders.get("vqgan")
    if want and want.get("sha256") and needle.vqgan and needle.vqgan.get("sha256") != want["sha256"]:
        raise EncoderMismatch(
            f"{source}: its frames were encoded with VQGAN {describe(want)}; the needle {needle.name!r} was "
            f"encoded with {describe(needle.vqgan)}: its codes would mean nothing in this video; pass the "
            "haystack's VQGAN (--vqgan WEIGHTS, or leave --vqgan out to use the one its manifest records)"
        )


def _fingerprint(tokenizer: Any) -> str | None:
    try:
        return str(tokenizer.fingerprint()["sha256"])
    except (AttributeError, KeyError, TypeError):
        return None


def _render(recipe: dict[str, Any], hay: VideoHaystack) -> TokenPrompt:
    n = len(hay.frames)
    picked = hay.frames[(recipe["start"] + np.arange(recipe["frames"])) % n]  # [frames, 16, 16]
    needle = np.asarray(recipe["needle_codes"], np.int32).reshape(-1, CODE_GRID, CODE_GRID)
    i = recipe["insert"]
    video = np.concatenate([picked[:i], needle, picked[i:]])  # [frames + F, 16, 16]
    body = np.empty((len(video), TOKENS_PER_FRAME), np.int32)
    body[:, :-1] = video.reshape(len(video), -1)
    body[:, -1] = EOF_ID
    body[-1, -1] = EOV_ID
    text_head = [recipe["bos_id"], *recipe["prefix_ids"], *recipe["vision_start_ids"]]
    text_tail = [*recipe["vision_end_ids"], *recipe["suffix_ids"]]
    tokens = np.concatenate([np.asarray(text_head, np.int32), body.reshape(-1), np.asarray(text_tail, np.int32)])
    mask = np.zeros(len(tokens), bool)
    mask[len(text_head) : len(text_head) + body.size] = True
    return TokenPrompt(tokens, mask)


def prompt_sha256(prompt: TokenPrompt) -> str:
    """SHA-256 of the token ids (int32 little-endian) followed by the mask bytes."""
    h = hashlib.sha256(np.asarray(prompt.tokens, "<i4").tobytes())
    h.update(np.asarray(prompt.vision_mask, bool).tobytes())
    return h.hexdigest()


def video_prompt(case: dict[str, Any]) -> TokenPrompt:
    """Rebuilds a video case's token prompt from its recipe and checks it against `prompt_sha256`.

    Raises:
      CaseError: if the haystack changed or the rebuilt prompt differs.
    """
    recipe = case["recipe"]
    if recipe.get("version") != VIDEO_RECIPE_VERSION:
        raise CaseError(f"video recipe version {recipe.get('version')!r}; this lwmkit reads {VIDEO_RECIPE_VERSION}")
    hay = VideoHaystack.load(VideoHaystackSpec(**recipe["haystack"]))
    if hay.fingerprint != recipe["haystack_fingerprint"]:
        source = recipe["haystack"]["source"]
        raise CaseError(f"case {case.get('id')}: video haystack {source} changed since it was built")
    prompt = _render(recipe, hay)
    if case.get("prompt_sha256") and prompt_sha256(prompt) != case["prompt_sha256"]:
        raise CaseError(f"case {case.get('id')}: the rebuilt video prompt differs from the recorded one")
    return prompt
