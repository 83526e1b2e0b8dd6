"""QA generators: the `QAGenerator` protocol, reply parsing and validation, and the chat-model generator.

A generator turns a chunk into question-answer pairs in two steps, so that the costly step can be
cached and the cheap one redone:
    reply(chunk, attempt) -> Reply       the call (a model request; may raise `CallError`)
    parse(reply, chunk)   -> [QAPair]    parsing and validation (raises `InvalidReply`)
`qa_calls.generate_pairs` runs the two with the cache and retries a reply that fails validation
as a new attempt. Implementations:
    ChatQAGenerator       any OpenAI-compatible chat-completions server (`qa_client`)
    ExtractiveGenerator   no model: questions built from the chunk's own sentences (`qa_extractive`)

Accepted reply formats (after removing a ``` fence): a JSON object `{"question": .., "answer": ..}`,
a JSON list of them, an object holding such a list under `pairs`, `qa` or `questions`, JSON
embedded in other text, or plain `Question: ... / Answer: ...` lines.

Validation: question and answer non-empty after whitespace is collapsed and at most
`max_chars` long, and the answer supported by the chunk: `exact` (the answer occurs in the chunk,
ignoring case and whitespace) or `words` (at least `min_support` of the answer's words occur in it).
Example:
    chunk  "Ada found the silver key near the harbour."
    reply  '```json\\n[{"question": "What did Ada find?", "answer": "the silver key"}]\\n```'
    pairs  [QAPair(question='What did Ada find?', answer='the silver key')]   (support 1.0)
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from lwmkit.pipelines.engine.job_options import check_choices, check_ranges
from lwmkit.pipelines.qa.chunks import Chunk
from lwmkit.pipelines.qa.client import (
    ChatStep,
    ClientOptions,
    MalformedReply,
    reply_content,
    usage_of,
)

SUPPORT_MODES = ("exact", "words", "none")
DEFAULT_SYSTEM_PROMPT = "You write reading-comprehension questions about passages from books."
DEFAULT_PROMPT = (
    "Write {n} question(s) about the passage below. Each must be answerable from the passage alone, "
    "with a short answer taken from the passage's own words. Reply with JSON only, in the form "
    '[{"question": "...", "answer": "..."}].\n\nPassage:\n{chunk}'
)
_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.S)
_Q = r"Q(?:uestion)?\s*\d*\s*[:.]"
_A = r"A(?:nswer)?\s*\d*\s*[:.]"
_PLAIN = re.compile(rf"(?:^|\n)\s*{_Q}\s*(.+?)\s*\n\s*{_A}\s*(.+?)(?=\n\s*{_Q}|\Z)", re.S | re.I)
_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str


@dataclass(frozen=True)
class Reply:
    """What one generator call returned: the raw body (cached, shown in failures) and its cost."""

    body: str
    usage: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    waited_s: float = 0.0


class InvalidReply(ValueError):
    """A reply that gives no valid pair; `reason` is e.g. `malformed_reply`, `unsupported_answer`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class QAGenerator(Protocol):
    """Turns a chunk into QA pairs; see the module docstring."""

    @property
    def concurrency(self) -> int:
        """Calls worth running at once (1 for a generator that only uses the CPU)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the manifest records: `kind` and every setting (never a secret)."""
        ...

    def cache_identity(self) -> dict[str, Any] | None:
        """What besides the chunk and attempt determines a reply (model, prompt, parameters); None: not cached."""
        ...

    def reply(self, chunk: Chunk, attempt: int) -> Reply: ...

    def parse(self, reply: Reply, chunk: Chunk) -> list[QAPair]: ...


def collapse_space(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _pairs_from_json(obj: Any) -> list[Any] | None:
    if isinstance(obj, dict):
        lower = {str(k).lower(): v for k, v in obj.items()}
        if "question" in lower or "answer" in lower:
            return [lower]
        for key in ("pairs", "qa", "questions", "qa_pairs"):
            if isinstance(lower.get(key), list):
                return lower[key]
        return None
    return obj if isinstance(obj, list) else None


def _json_candidates(text: str) -> list[str]:
    out = [text]
    for opener, closer in (("[", "]"), ("{", "}")):
        a, b = text.find(opener), text.rfind(closer)
        if 0 <= a < b:
            out.append(text[a : b + 1])
    return out


def parse_pairs(text: str) -> list[tuple[Any, Any]]:
    """Raw (question, answer) values of a reply in any accepted format (see the module docstring).

    Raises:
      InvalidReply: `malformed_reply` if no format matches.
    """
    fenced = _FENCE.search(text)
    body = (fenced.group(1) if fenced else text).strip()
    for candidate in _json_candidates(body):
        try:
            items = _pairs_from_json(json.loads(candidate))
        except ValueError:
            continue
        if items is None:
            continue
        out = []
        for item in items:
            if isinstance(item, dict):
                lower = {str(k).lower(): v for k, v in item.items()}
                out.append((lower.get("question"), lower.get("answer")))
            else:
                out.append((None, None))
        return out
    plain = _PLAIN.findall(body)
    if plain:
        return [(q, a) for q, a in plain]
    raise InvalidReply("malformed_reply", f"no JSON pairs or Question/Answer lines in {text[:200]!r}")


def answer_support(answer: str, chunk_text: str) -> float:
    """The share of the answer's words that occur in the chunk (case-insensitive)."""
    words = _WORD.findall(answer.lower())
    if not words:
        return 0.0
    vocab = set(_WORD.findall(chunk_text.lower()))
    return sum(w in vocab for w in words) / len(words)


def validate_pairs(
    raw: list[tuple[Any, Any]], chunk_text: str, *, support: str, min_support: float, max_chars: int, limit: int
) -> list[QAPair]:
    """The valid pairs of a parsed reply, at most `limit`, duplicates removed.

    Raises:
      InvalidReply: with the first pair's reason when no pair is valid (`no_pairs` for an empty reply).
    """
    if not raw:
        raise InvalidReply("no_pairs", "the reply holds an empty list")
    kept: list[QAPair] = []
    first_error: InvalidReply | None = None
    chunk_flat = collapse_space(chunk_text).lower()
    for q, a in raw:
        try:
            if not isinstance(q, str) or not collapse_space(q):
                raise InvalidReply("missing_question", f"question {q!r}")
            if not isinstance(a, str | int | float) or not collapse_space(str(a)):
                raise InvalidReply("missing_answer", f"answer {a!r} to {q!r}")
            question, answer = collapse_space(q), collapse_space(str(a))
            if len(question) > max_chars or len(answer) > max_chars:
                raise InvalidReply("too_long", f"question or answer over {max_chars} characters")
            if support == "exact" and answer.lower() not in chunk_flat:
                raise InvalidReply("unsupported_answer", f"answer {answer!r} does not occur in the chunk")
            if support == "words" and (s := answer_support(answer, chunk_text)) < min_support:
                raise InvalidReply(
                    "unsupported_answer",
                    f"{s:.0%} of the words of answer {answer!r} occur in the chunk, need {min_support:.0%}",
                )
        except InvalidReply as e:
            first_error = first_error or e
            continue
        pair = QAPair(question, answer)
        if pair.question not in {p.question for p in kept}:
            kept.append(pair)
    if not kept:
        raise first_error or InvalidReply("no_pairs")
    return kept[:limit]


def render_prompt(template: str, chunk_text: str, n: int) -> str:
    """The prompt: `{n}` and `{chunk}` replaced (any other braces are literal, e.g. a JSON example)."""
    return template.replace("{n}", str(n)).replace("{chunk}", chunk_text)


@dataclass(frozen=True)
class ChatGeneratorOptions:
    """A chat model behind an OpenAI-compatible server.

    Attributes:
      client: server, model, key variable, timeouts, retries, concurrency.
      system_prompt: the system message ("" sends none).
      prompt: the user message; `{chunk}` (exactly once) is the chunk text, `{n}` the pairs wanted.
      temperature, max_tokens: sampling parameters sent with every request.
      seed: request seed; attempt k sends seed + k so a retry samples anew (None: send none).
      pairs_per_chunk: pairs asked for and kept per chunk.
      support: how answers are checked against the chunk: exact, words or none.
      min_support: with `words`, the share of answer words that must occur in the chunk.
      max_chars: longest question or answer kept.
    """

    client: ClientOptions
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    prompt: str = DEFAULT_PROMPT
    temperature: float = 0.7
    max_tokens: int = 512
    seed: int | None = 0
    pairs_per_chunk: int = 1
    support: str = "words"
    min_support: float = 0.5
    max_chars: int = 1000

    def __post_init__(self):
        if self.prompt.count("{chunk}") != 1:
            raise ValueError(f"prompt: must hold {{chunk}} exactly once, got {self.prompt.count('{chunk}')}")
        check_ranges(self, temperature="[0, 2]", max_tokens=f"1..{1 << 20}", pairs_per_chunk="1..64")
        check_choices(self, support=SUPPORT_MODES)
        check_ranges(self, min_support="[0, 1]")
        if self.max_chars < 1:
            raise ValueError(f"max_chars: {self.max_chars} must be >= 1")


class ChatQAGenerator(ChatStep):
    """Asks a chat model for QA pairs; see `ChatGeneratorOptions` and the module docstring."""

    options: ChatGeneratorOptions

    def _params(self, attempt: int) -> dict[str, Any]:
        o = self.options
        params: dict[str, Any] = {"temperature": o.temperature, "max_tokens": o.max_tokens}
        if o.seed is not None:
            params["seed"] = o.seed + attempt
        return params

    def describe(self) -> dict[str, Any]:
        o = self.options
        client = asdict(o.client)
        return {"kind": "openai_chat", **{k: v for k, v in asdict(o).items() if k != "client"}, "client": client}

    def cache_identity(self) -> dict[str, Any]:
        o = self.options
        return {
            "kind": "openai_chat",
            "model": o.client.model,
            "prompt": [o.system_prompt, o.prompt],
            "params": {
                "temperature": o.temperature,
                "max_tokens": o.max_tokens,
                "seed": o.seed,
                "n": o.pairs_per_chunk,
            },
        }

    def messages(self, chunk: Chunk) -> list[dict[str, str]]:
        o = self.options
        user = {"role": "user", "content": render_prompt(o.prompt, chunk.text, o.pairs_per_chunk)}
        return ([{"role": "system", "content": o.system_prompt}] if o.system_prompt else []) + [user]

    def reply(self, chunk: Chunk, attempt: int) -> Reply:
        r = self.client.complete(self.messages(chunk), **self._params(attempt))
        try:
            usage = usage_of(json.loads(r.body))
        except ValueError:
            usage = usage_of(None)
        return Reply(r.body, usage, r.requests, r.waited_s)

    def parse(self, reply: Reply, chunk: Chunk) -> list[QAPair]:
        try:
            content, _ = reply_content(reply.body)
        except MalformedReply as e:
            raise InvalidReply("malformed_reply", str(e)) from e
        o = self.options
        return validate_pairs(
            parse_pairs(content),
            chunk.text,
            support=o.support,
            min_support=o.min_support,
            max_chars=o.max_chars,
            limit=o.pairs_per_chunk,
        )
