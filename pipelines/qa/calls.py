"""Running a QA generator over chunks: cache first, validation retries, concurrency, accounting.

For each chunk, attempts 0, 1, ... up to `max_attempts`:
    1. the reply for (chunk, generator identity, attempt) comes from the cache if it is there; else
       the generator is called (its transport retries 429/5xx/timeouts itself) and the reply is
       cached at once, before it is parsed, so a crash or a rerun never pays for it again;
    2. the reply is parsed and validated; valid pairs end the chunk, an invalid reply (malformed,
       unsupported answer, ...) moves on to the next attempt.
A call that gets no reply (`CallError`: retries used up, or a status that is not retried) ends the
chunk with that reason (counted as an attempt, with its requests and backoff time) and caches
nothing: a rerun tries it again. Cached replies are read past `max_attempts` while there are any;
with `fresh` (--retry-failures) a chunk gets `max_attempts` new calls after its cached replies, so
one whose cached replies all failed validation is asked again instead of replaying them. A chunk that ends without pairs
carries its last reason and the raw bodies of its invalid replies, for the failures file.

Example, max_attempts 3, a server whose first reply to a chunk is malformed:
    attempt 0  cache miss -> call -> cached -> malformed_reply
    attempt 1  cache miss -> call -> cached -> 1 pair            result: calls 2, cache_hits 0
    rerun      attempt 0 hit -> malformed_reply; attempt 1 hit -> 1 pair    calls 0, cache_hits 2
A chunk whose 3 cached replies are all malformed, with fresh:
    attempts 0-2 hit -> malformed; attempt 3 miss -> call -> cached -> 1 pair   calls 1, cache_hits 3
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from lwmkit.pipelines.qa.cache import ReplyCache, cache_key, cache_request
from lwmkit.pipelines.qa.chunks import Chunk
from lwmkit.pipelines.qa.client import USAGE_KEYS, CallError
from lwmkit.pipelines.qa.generators import InvalidReply, QAGenerator, QAPair

RAW_CHARS = 2000  # of each invalid reply kept for the failures file
MAX_REPLIES = 1000  # cached replies read for one chunk, at most (a bound, never reached in use)


def _zero_usage() -> dict[str, int]:
    return dict.fromkeys(USAGE_KEYS, 0)


@dataclass
class ChunkResult:
    """What generation made of one chunk.

    Attributes:
      chunk_id: the chunk.
      pairs: the valid pairs (empty when the chunk failed).
      reason, detail: why no pair was kept (reason None when pairs were found).
      raw: bodies of the replies that failed validation (each cut to RAW_CHARS).
      attempts: replies parsed (cached or new), and the call that got no reply, if any.
      calls: replies paid for in this run (cache misses that got a reply).
      cache_hits: replies read from the cache.
      requests: HTTP requests sent, retries included.
      waited_s: seconds spent in backoff waits.
      usage: token usage of the replies paid for in this run.
      cached_usage: token usage recorded with the cached replies (what the cache saved).
    """

    chunk_id: str
    pairs: list[QAPair] = field(default_factory=list)
    reason: str | None = None
    detail: str = ""
    raw: list[str] = field(default_factory=list)
    attempts: int = 0
    calls: int = 0
    cache_hits: int = 0
    requests: int = 0
    waited_s: float = 0.0
    usage: dict[str, int] = field(default_factory=_zero_usage)
    cached_usage: dict[str, int] = field(default_factory=_zero_usage)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["pairs"] = [[p.question, p.answer] for p in self.pairs]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChunkResult:
        return cls(**{**d, "pairs": [QAPair(q, a) for q, a in d["pairs"]]})


def _add(total: dict[str, int], usage: dict[str, int]) -> None:
    for k in USAGE_KEYS:
        total[k] += int(usage.get(k, 0))


def generate_pairs(
    generator: QAGenerator, chunk: Chunk, cache: ReplyCache | None, max_attempts: int, fresh: bool = False
) -> ChunkResult:
    """QA pairs for one chunk; see the module docstring. Never raises for a bad reply or a failed call.

    Cached replies are free: they are read in attempt order for as long as there are any, even past
    `max_attempts` (replies an earlier `fresh` run paid for). New calls are made up to `max_attempts`
    attempts in all, or, with `fresh` (--retry-failures), up to `max_attempts` new calls after the
    cached replies, so a chunk whose cached replies all failed validation gets new attempts.
    """
    result = ChunkResult(chunk.chunk_id)
    identity = generator.cache_identity()  # None: a free generator, neither counted as calls nor cached
    new = 0
    for attempt in range(MAX_REPLIES):
        request = key = None
        reply = None
        if identity is not None and cache is not None:
            request = cache_request(chunk.sha256, identity, attempt)
            key = cache_key(request)
            reply = cache.get(key)
        if reply is not None:
            result.cache_hits += 1
            _add(result.cached_usage, reply.usage)
        else:
            if (new if fresh else attempt) >= max_attempts:
                break
            new += 1
            try:
                reply = generator.reply(chunk, attempt)
            except CallError as e:
                result.attempts += 1  # an attempt that got no reply is an attempt all the same
                result.requests += e.requests
                result.waited_s += e.waited_s
                result.reason, result.detail = e.reason, e.detail[:RAW_CHARS]
                return result
            result.requests += reply.requests
            result.waited_s += reply.waited_s
            if identity is not None:
                result.calls += 1
                _add(result.usage, reply.usage)
                if cache is not None:
                    cache.put(key, request, reply)
        result.attempts += 1
        try:
            result.pairs = generator.parse(reply, chunk)
        except InvalidReply as e:
            result.reason, result.detail = e.reason, e.detail[:RAW_CHARS]
            result.raw.append(reply.body[:RAW_CHARS])
            continue
        result.reason, result.detail, result.raw = None, "", []
        return result
    return result


def _guarded(
    generator: QAGenerator, chunk: Chunk, cache: ReplyCache | None, max_attempts: int, fresh: bool = False
) -> ChunkResult:
    try:
        return generate_pairs(generator, chunk, cache, max_attempts, fresh)
    except Exception as e:  # a generator bug on one chunk is that chunk's failure, not the job's
        return ChunkResult(chunk.chunk_id, reason="generator_error", detail=f"{type(e).__name__}: {e}"[:RAW_CHARS])


def generate_all(
    generator: QAGenerator,
    chunks: Sequence[Chunk],
    cache: ReplyCache | None,
    max_attempts: int,
    concurrency: int | None = None,
    fresh: bool = False,
) -> list[ChunkResult]:
    """Results for every chunk, in input order, with up to `concurrency` chunks in flight.

    Args:
      concurrency: threads (default: the generator's own `concurrency`).
      fresh: new attempts after the cached ones (see `generate_pairs`).
    """
    workers = max(1, min(concurrency or generator.concurrency, len(chunks)))
    if workers == 1:
        return [_guarded(generator, c, cache, max_attempts, fresh) for c in chunks]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lwmkit-qa") as pool:
        return list(pool.map(lambda c: _guarded(generator, c, cache, max_attempts, fresh), chunks))
