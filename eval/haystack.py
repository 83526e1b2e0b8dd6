"""Haystacks: any text the user has, cut into sentence units, shuffled by document with a seed.

Sources (`HaystackSpec.sources`, any mix):
    *.txt                one document per file
    *.jsonl, *.jsonl.zst one document per line, its text under `text_field`
    <dataset directory>  lwmkit document shards (a `documents/` output of `lwm-pack`): each record's
                         text tokens are decoded with the tokenizer the dataset was made with
Documents are shuffled with `seed`, then each is split into units: sentences (`sentences.py`:
after . ! ? and closing quotes, or at a blank line, never after "Mr.", "Dr.", "St.", an initial and
the like), whitespace collapsed to single spaces, sentences longer than `max_unit_chars` split
again after a word (never after an abbreviation). Needles go in between units, so they always land
at a sentence boundary (or a word boundary inside an over-long sentence).

Example:
    before: documents ["It rained.  Mr. Knightley stayed in!", "Dawn came."]  (seed 0 keeps this order)
    after:  units     ["It rained.", "Mr. Knightley stayed in!", "Dawn came."]

The fingerprint (SHA-256 of the units) goes into every case recipe, so a rebuild from changed
sources fails instead of silently giving another prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lwmkit.eval.jsonl import json_lines
from lwmkit.eval.sentences import cut_allowed, split_sentences

_CACHE: dict[str, Haystack] = {}


class HaystackError(ValueError):
    """A haystack source cannot be read; the message names the file (and line) and the reason."""


@dataclass(frozen=True)
class HaystackSpec:
    """Where the haystack text comes from and how it is cut.

    Attributes:
      sources: paths of .txt / .jsonl / .jsonl.zst files or lwmkit document dataset directories.
      seed: shuffles the order of documents.
      text_field: the JSONL key holding a document's text.
      max_unit_chars: units longer than this are split at spaces (bounds the needle's distance
        from its requested depth).
    """

    sources: tuple[str, ...]
    seed: int = 0
    text_field: str = "text"
    max_unit_chars: int = 600

    def __post_init__(self):
        if isinstance(self.sources, str) or not self.sources:
            raise ValueError(f"HaystackSpec.sources={self.sources!r}; allowed: a non-empty tuple of paths")
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
        if not 40 <= self.max_unit_chars <= 100_000:
            raise ValueError(f"HaystackSpec.max_unit_chars={self.max_unit_chars}; allowed: 40..100000")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sources": list(self.sources)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HaystackSpec:
        return cls(**{**d, "sources": tuple(d["sources"])})


def split_units(text: str, max_unit_chars: int = 600) -> list[str]:
    """Sentences of `text`, whitespace collapsed, none longer than `max_unit_chars` (a longer one is
    split after the last word that may end a piece: `sentences.cut_allowed`)."""
    out: list[str] = []
    for s in split_sentences(text):
        while len(s) > max_unit_chars:
            cut = next((c for c in range(max_unit_chars, 0, -1) if cut_allowed(s, c)), max_unit_chars)
            out.append(s[:cut].rstrip())
            s = s[cut:].lstrip()
        if s:
            out.append(s)
    return out


def _read_jsonl(path: str, field: str) -> list[str]:
    if path.endswith(".zst"):
        import zstandard

        try:
            with open(path, "rb") as f:
                data = zstandard.ZstdDecompressor().stream_reader(f).read()
        except zstandard.ZstdError as e:
            raise HaystackError(f"{path}: not a readable zstd file: {e}") from e
    else:
        data = None
    docs = []
    for i, row in json_lines(path, HaystackError, data):
        if not isinstance(row.get(field), str):
            raise HaystackError(f"{path}:{i}: no string field {field!r}")
        docs.append(row[field])
    return docs


def _read_dataset(path: str, tokenizer: Any) -> list[str]:
    from lwmkit.eval.encoders import EncoderMismatch, check_tokenizer
    from lwmkit.packing.manifest import load_manifest
    from lwmkit.packing.source import ShardDataSource

    manifest = load_manifest(path)
    if manifest.get("kind") != "document":
        raise HaystackError(f"{path}: a haystack needs document records, this dataset is {manifest.get('kind')!r}")
    if tokenizer is None:
        raise HaystackError(f"{path}: decoding document shards needs the tokenizer they were made with")
    try:
        check_tokenizer(path, manifest, tokenizer, "the text would decode wrongly")
    except EncoderMismatch as e:
        raise HaystackError(str(e)) from e
    source = ShardDataSource(path)
    docs = []
    for i in range(len(source)):
        rec = source[i]
        text_ids = np.asarray(rec["tokens"])[~np.asarray(rec["vision_mask"], dtype=bool)]
        docs.append(tokenizer.decode(text_ids.tolist()))
    return docs


def read_documents(path: str, text_field: str = "text", tokenizer: Any = None) -> list[str]:
    """The documents of one source (see the module docstring).

    Raises:
      HaystackError: naming the file (and line) for a missing file, bad JSON or an unknown type.
    """
    if os.path.isdir(path):
        return _read_dataset(path, tokenizer)
    if not os.path.exists(path):
        raise HaystackError(f"{path}: no such file or directory")
    if path.endswith(".txt"):
        try:
            with open(path, encoding="utf-8") as f:
                return [f.read()]
        except UnicodeDecodeError as e:
            raise HaystackError(f"{path}: not UTF-8 text: {e}") from e
    if path.endswith((".jsonl", ".jsonl.zst")):
        return _read_jsonl(path, text_field)
    raise HaystackError(f"{path}: unknown haystack type; use .txt, .jsonl, .jsonl.zst or a dataset directory")


class Haystack:
    """The units of a `HaystackSpec`, with per-tokenizer token counts cached per unit.

    Build with `Haystack.load(spec)`, or `Haystack.from_documents` for text already in memory.
    """

    def __init__(self, spec: HaystackSpec, units: list[str], documents: int):
        if not units:
            raise HaystackError(f"haystack {list(spec.sources)} holds no text")
        self.spec = spec
        self.units = units
        self.documents = documents
        h = hashlib.sha256()
        for u in units:
            h.update(u.encode("utf-8"))
            h.update(b"\x1e")
        self.fingerprint = h.hexdigest()
        self._counts: dict[tuple[str, str], np.ndarray] = {}

    @classmethod
    def from_documents(cls, spec: HaystackSpec, docs: Sequence[str]) -> Haystack:
        order = list(range(len(docs)))
        random.Random(spec.seed).shuffle(order)
        units = [u for i in order for u in split_units(docs[i], spec.max_unit_chars)]
        return cls(spec, units, len(docs))

    @classmethod
    def load(cls, spec: HaystackSpec, tokenizer: Any = None, cache: bool = True) -> Haystack:
        """Reads every source (cached per spec and file sizes/mtimes in this process).

        Args:
          tokenizer: decodes document shards; must be the one they were made with.
        """
        stamp = [(p, os.path.getsize(p), os.path.getmtime(p)) if os.path.isfile(p) else (p,) for p in spec.sources]
        key = json.dumps([spec.to_json(), stamp], sort_keys=True)
        if cache and key in _CACHE:
            return _CACHE[key]
        docs = [d for p in spec.sources for d in read_documents(p, spec.text_field, tokenizer)]
        hay = cls.from_documents(spec, docs)
        if cache:
            _CACHE.clear()  # one haystack at a time: they can be large
            _CACHE[key] = hay
        return hay

    def __len__(self) -> int:
        return len(self.units)

    def counts(self, counter: Any, indices: np.ndarray, mode: str) -> np.ndarray:
        """Token counts of units `indices` (int array) as they count inside a context.

        mode "dummy": each unit encoded alone (a tokenizer whose dummy prefix stands for the space
        before it, like SentencePiece's); "space": " " + unit (byte-level BPE and the like).
        """
        key = (counter.key, mode)
        cache = self._counts.get(key)
        if cache is None:
            cache = self._counts[key] = np.full(len(self.units), -1, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        missing = np.unique(indices[cache[indices] < 0])
        for lo in range(0, missing.size, 8192):
            chunk = missing[lo : lo + 8192]
            texts = [self.units[i] if mode == "dummy" else " " + self.units[i] for i in chunk.tolist()]
            cache[chunk] = counter.counts(texts)
        return cache[indices]
