"""The two model steps of the video-QA job, as generators the QA job's call runner drives.

Each class follows `qa.generators.QAGenerator` (reply / parse / cache_identity / describe /
concurrency), so `qa.calls.generate_all` gives both steps the QA job's machinery: the reply cache
keyed by the request, invalid replies retried as new attempts, concurrency, token accounting, and
the raw bodies of replies that never validated (for `failures.jsonl`).

    ChatCaptioner   one clip's thumbnails -> a caption: chat completions with image parts
                    (`{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}`,
                    as vLLM, llama.cpp's server and TGI accept)
    ChatTimelineQA  the timestamped caption timeline of a whole video -> QA pairs, each naming the
                    clips that support it: `[{"question", "answer", "clips": [3, 7]}]`
    OfflineCaptioner, OfflineTimelineQA   no model (tests, users without a server): a caption from
                    the thumbnails' colours and brightness, and questions read off the timeline;
                    their `kind` is `offline` in the manifest

Validation: a caption is non-empty and at most `max_chars`; a QA pair needs a question, an answer,
and evidence clips that exist in the video (`evidence_outside_video` otherwise). Pairs that fail are
left out; a reply with no valid pair is invalid (`malformed_reply`, `empty_answer`, ...).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from lwmkit.pipelines.engine.job_options import check_ranges
from lwmkit.pipelines.qa.client import ChatStep, ClientOptions, MalformedReply, reply_content
from lwmkit.pipelines.qa.generators import InvalidReply, QAPair, Reply, collapse_space, parse_pairs

CAPTION_PROMPT = (
    "These frames come from one clip of a video, from {start} to {end}. Describe what happens in the "
    "clip in one or two sentences: who or what is visible, actions, setting, any text on screen."
)
QA_SYSTEM_PROMPT = "You write questions about long videos from their timestamped clip descriptions."
QA_PROMPT = (
    "Below is the timeline of a {duration} video: one line per clip, `[clip number] start-end: description`. "
    "Write {n} question(s) about the whole video whose answers need the timeline, for example what "
    "happens before or after something, or when something happens. Reply with JSON only, in the form "
    '[{{"question": "...", "answer": "...", "clips": [clip numbers that support the answer]}}].\n\nTimeline:\n{timeline}'
)


def clock(seconds: float) -> str:
    """`mm:ss` (or `h:mm:ss` from an hour on) of a time in seconds."""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


@dataclass(frozen=True)
class ClipItem:
    """One clip as the captioner sees it; `chunk_id`/`sha256` name it for the call runner and cache."""

    chunk_id: str
    start: float
    end: float
    thumbs: tuple[str, ...]  # base64 JPEG

    @property
    def sha256(self) -> str:
        h = hashlib.sha256(f"{self.start:.3f}-{self.end:.3f}".encode())
        for t in self.thumbs:
            h.update(t.encode())
        return h.hexdigest()


@dataclass(frozen=True)
class TimelineItem:
    """A whole video's captioned timeline; `clips` are (number, start, end, caption)."""

    chunk_id: str
    duration: float
    clips: tuple[tuple[int, float, float, str], ...]

    @property
    def text(self) -> str:
        return "\n".join(f"[{i}] {clock(a)}-{clock(b)}: {c}" for i, a, b, c in self.clips)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(f"{self.duration:.3f}\n{self.text}".encode()).hexdigest()


@dataclass(frozen=True)
class VideoQAPair(QAPair):
    clips: tuple[int, ...] = ()


@dataclass(frozen=True)
class ChatCaptionerOptions:
    """The captioning step's chat model: one caption per clip, from the clip's thumbnails.

    Attributes:
      client: server, model, key variable, timeouts, retries, concurrency.
      prompt: the user message sent with the thumbnails; `{start}` and `{end}` are the clip's times.
      temperature, max_tokens: sampling parameters sent with every request.
      max_chars: a longer caption is an invalid reply (caption_too_long).
    """

    client: ClientOptions
    prompt: str = CAPTION_PROMPT
    temperature: float = 0.0
    max_tokens: int = 160
    max_chars: int = 2000

    def __post_init__(self):
        check_ranges(self, max_tokens="1..32768", temperature="[0, 2]")


@dataclass(frozen=True)
class ChatQAOptions:
    """The question step's chat model: questions about a whole video, from its timeline of captions.

    Attributes:
      client: server, model, key variable, timeouts, retries, concurrency.
      prompt, system_prompt: the user message (`{duration}`, `{n}` questions and `{timeline}` filled
        in) and the system message.
      questions: questions asked per video.
      temperature, max_tokens: sampling parameters sent with every request.
    """

    client: ClientOptions
    prompt: str = QA_PROMPT
    system_prompt: str = QA_SYSTEM_PROMPT
    questions: int = 4
    temperature: float = 0.0
    max_tokens: int = 1024

    def __post_init__(self):
        check_ranges(self, questions="1..64", max_tokens="1..32768")


@dataclass(frozen=True)
class OfflineOptions:
    """The offline steps (no model); `questions` per video for the QA step."""

    questions: int = 4

    def __post_init__(self):
        check_ranges(self, questions="1..64")


def _describe_chat(kind: str, options: Any) -> dict[str, Any]:
    d = asdict(options)
    d["client"] = {k: d["client"][k] for k in ("base_url", "model", "api_key_env", "retries", "concurrency")}
    return {"kind": kind, **d}


def _content(reply: Reply) -> str:
    try:
        text, _ = reply_content(reply.body)
    except MalformedReply as e:
        raise InvalidReply("malformed_reply", str(e)) from e
    return text


class VideoChatStep(ChatStep):
    """A video-QA step that asks a chat model (captions, questions): how it describes itself in the
    manifest, and its call with the options' temperature and max_tokens (seed: the attempt)."""

    def describe(self) -> dict[str, Any]:
        return _describe_chat("openai_chat", self.options)

    def ask(self, messages: list[dict[str, Any]], attempt: int) -> Reply:
        """The reply to `messages`, with its token usage when the body has one."""
        o = self.options
        r = self.client.complete(messages, temperature=o.temperature, max_tokens=o.max_tokens, seed=attempt)
        try:
            _, usage = reply_content(r.body)
        except MalformedReply:
            usage = {}
        return Reply(r.body, usage, r.requests, r.waited_s)


class ChatCaptioner(VideoChatStep):
    options: ChatCaptionerOptions

    def cache_identity(self) -> dict[str, Any]:
        o = self.options
        return {"step": "caption", "model": o.client.model, "prompt": o.prompt, "temperature": o.temperature,
                "max_tokens": o.max_tokens}

    def messages(self, item: ClipItem) -> list[dict[str, Any]]:
        text = self.options.prompt.format(start=clock(item.start), end=clock(item.end))
        images = [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{t}"}} for t in item.thumbs]
        return [{"role": "user", "content": [{"type": "text", "text": text}, *images]}]

    def reply(self, item: ClipItem, attempt: int) -> Reply:
        return self.ask(self.messages(item), attempt)

    def parse(self, reply: Reply, item: ClipItem) -> list[QAPair]:
        text = collapse_space(_content(reply))
        if not text:
            raise InvalidReply("empty_caption", "the reply's content is empty")
        if len(text) > self.options.max_chars:
            raise InvalidReply("caption_too_long", f"{len(text)} characters > max_chars {self.options.max_chars}")
        return [QAPair(item.chunk_id, text)]


class OfflineCaptioner:
    """A caption from the thumbnails alone: main colour, brightness, and change within the clip."""

    concurrency = 1

    def describe(self) -> dict[str, Any]:
        return {"kind": "offline", "note": "captions from frame colours, no model"}

    def cache_identity(self) -> None:
        return None

    def reply(self, item: ClipItem, attempt: int) -> Reply:
        from PIL import Image

        frames = [np.asarray(Image.open(io.BytesIO(base64.b64decode(t))).convert("RGB"), np.float32)
                  for t in item.thumbs]
        means = [f.mean(axis=(0, 1)) for f in frames]  # [3] each
        rgb = np.mean(means, axis=0)
        names = ("red", "green", "blue")
        colour = names[int(np.argmax(rgb))] if float(rgb.max() - rgb.min()) > 12 else "grey"
        light = float(rgb.mean())
        tone = "dark" if light < 85 else "bright" if light > 170 else "mid-toned"
        change = float(np.abs(means[-1] - means[0]).mean())
        motion = "changing" if change > 8 else "steady"
        text = f"A {tone}, mostly {colour} {motion} scene from {clock(item.start)} to {clock(item.end)}."
        return Reply(json.dumps({"caption": text}))

    def parse(self, reply: Reply, item: ClipItem) -> list[QAPair]:
        return [QAPair(item.chunk_id, json.loads(reply.body)["caption"])]


def validate_video_pairs(raw: list[tuple[Any, Any]], objects: list[Any], item: TimelineItem) -> list[VideoQAPair]:
    """Valid pairs with their evidence clips; raises InvalidReply when none is valid."""
    known = {i for i, *_ in item.clips}
    pairs, reasons = [], []
    for (q, a), obj in zip(raw, objects, strict=True):
        q, a = collapse_space(str(q or "")), collapse_space(str(a or ""))
        clips = obj.get("clips") if isinstance(obj, dict) else None
        clips = [clips] if isinstance(clips, int) else clips
        if not q or not a:
            reasons.append("empty_answer" if q else "empty_question")
        elif not isinstance(clips, list) or not clips or not all(isinstance(c, int) and c in known for c in clips):
            reasons.append("evidence_outside_video")
        else:
            pairs.append(VideoQAPair(q, a, tuple(sorted(set(clips)))))
    if not pairs:
        raise InvalidReply(reasons[0] if reasons else "malformed_reply", f"no valid pair among {len(raw)}")
    return pairs


def _objects(text: str) -> list[Any]:
    """The JSON objects of a reply, in the order `parse_pairs` reads them ({} where none)."""
    for cand in (text.split("```")[1].removeprefix("json") if "```" in text else text, text):
        try:
            obj = json.loads(cand[cand.find("["):cand.rfind("]") + 1] if "[" in cand else cand)
        except ValueError:
            continue
        if isinstance(obj, list):
            return obj
        if isinstance(obj, dict):
            return [obj]
    return []


class ChatTimelineQA(VideoChatStep):
    options: ChatQAOptions

    def cache_identity(self) -> dict[str, Any]:
        o = self.options
        return {"step": "qa", "model": o.client.model, "prompt": o.prompt, "system": o.system_prompt,
                "questions": o.questions, "temperature": o.temperature, "max_tokens": o.max_tokens}

    def reply(self, item: TimelineItem, attempt: int) -> Reply:
        o = self.options
        user = o.prompt.format(duration=clock(item.duration), n=o.questions, timeline=item.text)
        return self.ask([{"role": "system", "content": o.system_prompt}, {"role": "user", "content": user}], attempt)

    def parse(self, reply: Reply, item: TimelineItem) -> list[QAPair]:
        text = _content(reply)
        raw = parse_pairs(text)
        objects = _objects(text)
        if len(objects) != len(raw):
            objects = [{}] * len(raw)
        if not raw:
            raise InvalidReply("malformed_reply", "no question/answer pair in the reply")
        return list(validate_video_pairs(raw, objects, item))


class OfflineTimelineQA:
    """Questions read off the timeline: what happens in a span, and what comes right after a clip."""

    concurrency = 1

    def __init__(self, options: OfflineOptions = OfflineOptions()):
        self.options = options

    def describe(self) -> dict[str, Any]:
        return {"kind": "offline", "questions": self.options.questions, "note": "questions from the timeline, no model"}

    def cache_identity(self) -> None:
        return None

    def reply(self, item: TimelineItem, attempt: int) -> Reply:
        clips = item.clips
        picks = sorted({int(k) for k in np.linspace(0, len(clips) - 1, min(self.options.questions, len(clips)))})
        pairs = []
        for n, k in enumerate(picks):
            i, a, b, caption = clips[k]
            if n % 2 == 1 and k + 1 < len(clips):
                j, _, _, after = clips[k + 1]
                pairs.append({"question": f"What happens right after {clock(b)}?", "answer": after, "clips": [j]})
            else:
                pairs.append({"question": f"What happens between {clock(a)} and {clock(b)}?", "answer": caption,
                              "clips": [i]})
        return Reply(json.dumps(pairs))

    def parse(self, reply: Reply, item: TimelineItem) -> list[QAPair]:
        objects = json.loads(reply.body)
        return list(validate_video_pairs([(o["question"], o["answer"]) for o in objects], objects, item))
