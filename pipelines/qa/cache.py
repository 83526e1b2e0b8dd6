"""The generator reply cache: every reply a generator paid for, stored so a rerun never pays twice.

One JSON file per reply, `<cache>/<key[:2]>/<key>.json`, written atomically (a crash leaves either
the whole file or none), on local disk or any Beam filesystem. The key is the sha256 of the
canonical JSON of (chunk sha256, the generator's `cache_identity()` (model, prompt templates,
sampling parameters), attempt number, cache version). Validation settings are not in the key, so a
changed threshold re-reads cached replies for free. Entries hold plain JSON only (no pickle):

    {"version": 1, "key": "3f2a...", "request": {"chunk_sha256": ..., "generator": {...}, "attempt": 0},
     "reply": {"body": "<the raw response body>", "usage": {"prompt_tokens": 412, ...}}}

An entry that cannot be read back (bad JSON, wrong key, wrong fields) counts as absent and is
overwritten by the next reply.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lwmkit.pipelines.engine.outputs import join, read_output_bytes, write_output_bytes
from lwmkit.pipelines.qa.generators import Reply

CACHE_VERSION = 1


def cache_request(chunk_sha256: str, identity: dict[str, Any], attempt: int) -> dict[str, Any]:
    return {"chunk_sha256": chunk_sha256, "generator": identity, "attempt": attempt}


def cache_key(request: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a request (see `cache_request`) and the cache version."""
    canon = json.dumps({**request, "version": CACHE_VERSION}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class ReplyCache:
    """A directory of cached replies; see the module docstring.

    Args:
      directory: local path or Beam filesystem URL (created on first write).
    """

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, key: str) -> str:
        return join(self.directory, key[:2], f"{key}.json")

    def get(self, key: str) -> Reply | None:
        """The cached reply under `key`, or None if there is none (or it cannot be read)."""
        raw = read_output_bytes(self.path(key))
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
            reply = entry["reply"]
            body, usage = reply["body"], reply["usage"]
            ok = entry.get("key") == key and isinstance(body, str) and isinstance(usage, dict)
        except (ValueError, KeyError, TypeError):
            return None
        if not ok or not all(isinstance(v, int) for v in usage.values()):
            return None
        return Reply(body, dict(usage), 0, 0.0)

    def put(self, key: str, request: dict[str, Any], reply: Reply) -> None:
        entry = {
            "version": CACHE_VERSION,
            "key": key,
            "request": request,
            "reply": {"body": reply.body, "usage": dict(reply.usage)},
        }
        write_output_bytes(self.path(key), json.dumps(entry, sort_keys=True, ensure_ascii=False).encode("utf-8"))
