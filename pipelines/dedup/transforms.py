"""The Beam stages of near-dedup, the same for books, images and videos (a `Matcher` says how):

    sketches --band keys--> (bucket key, sketch) --GroupByKey--> buckets
      --verify buckets--> candidate edges (a, b, similarity) that pass the matcher's check
      --one edge per pair--> [--exact Jaccard, text only, optional--]
      --components (union-find, one worker: see clusters.py)--> (removed, kept, cluster size)
      --join the two sketches--> Duplicate(removed, kept, similarity, cluster size)

Every step is keyed and scales with the workers except the component step, whose input is only
the verified edges. Nothing depends on the order of the input or on the runner: buckets are sorted
by key before pairing, an edge seen in several buckets is reduced by `max`, components are sets
and the survivor rule is a total order.

Example (three books, b2 a near copy of b1):
    sketches = docs | TextSketches(MinHashConfig())      # PCollection of (key, text) -> Sketch
    dups = sketches | NearDuplicates(TextMatcher())      # -> Duplicate("b2", "b1", 0.93, 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import apache_beam as beam
from apache_beam.metrics import Metrics
from lwmkit.pipelines.dedup.clusters import ComponentsFn
from lwmkit.pipelines.dedup.sketch import Duplicate, Sketch
from lwmkit.pipelines.dedup.text import MinHashConfig, exact_jaccard, shingle_hashes, text_sketch
from lwmkit.pipelines.engine.stages import split_tagged

NAMESPACE = "near_dedup"


class Matcher(Protocol):
    """How one kind of sketch is banded and verified (`TextMatcher`, `ImageMatcher`, `VideoMatcher`)."""

    kind: str

    def band_keys(self, sketch: Sketch) -> list[bytes]: ...

    def bucket_pairs(self, members: Sequence[Sketch]) -> Iterator[tuple[int, int, float]]: ...

    def similarity(self, a: Sketch, b: Sketch) -> float: ...

    def params(self) -> dict[str, Any]: ...


def _band_entries(sketch: Sketch, matcher: Matcher) -> Iterator[tuple[bytes, Sketch]]:
    for key in sorted(set(matcher.band_keys(sketch))):
        yield key, sketch


def _unique_members(sketches: Iterable[Sketch]) -> list[Sketch]:
    """Sorted by key; one key given to two different sketches is a caller error."""
    out: dict[str, Sketch] = {}
    for s in sketches:
        seen = out.setdefault(s.key, s)
        if seen is not s and not seen.same(s):
            raise ValueError(f"near-dedup keys must be unique: {s.key!r} names two different documents")
    return [out[k] for k in sorted(out)]


class _BucketPairs(beam.DoFn):
    """One bucket -> tagged records `(tag, value)` (split with `split_tagged`): "edges", its
    verified pairs ((a, b), (similarity, size a, size b)), and "members", (key, sketch) of every
    document in a pair (for the similarity join)."""

    def __init__(self, matcher: Matcher):
        self.matcher = matcher
        self.buckets = Metrics.counter(NAMESPACE, "buckets_with_pairs")
        self.edges = Metrics.counter(NAMESPACE, "verified_pairs")

    def process(self, element: tuple[bytes, Iterable[Sketch]]):
        members = _unique_members(element[1])
        if len(members) < 2:
            return
        paired: set[int] = set()
        for i, j, sim in self.matcher.bucket_pairs(members):
            a, b = members[i], members[j]
            paired.update((i, j))
            self.edges.inc()
            yield "edges", ((a.key, b.key), (sim, a.size, b.size))
        if paired:
            self.buckets.inc()
        for i in sorted(paired):
            yield "members", (members[i].key, members[i])


def _first_sketch(element: tuple[str, Iterable[Sketch]]) -> tuple[str, Sketch]:
    key, sketches = element
    return key, _unique_members(sketches)[0]


def _by_removed(element: tuple[str, str, int]) -> tuple[str, tuple[str, int]]:
    removed, kept, size = element
    return removed, (kept, size)


def _attach_removed(element: tuple[str, dict]) -> Iterator[tuple[str, tuple[Sketch, int]]]:
    _, joined = element
    for sketch in joined["sketch"]:
        for kept, size in joined["dup"]:
            yield kept, (sketch, size)


class _Similarity(beam.DoFn):
    def __init__(self, matcher: Matcher):
        self.matcher = matcher
        self.removed = Metrics.counter(NAMESPACE, "removed")

    def process(self, element: tuple[str, dict]):
        kept_key, joined = element
        for kept in joined["sketch"]:
            for removed, size in sorted(joined["dup"], key=lambda rs: rs[0].key):
                self.removed.inc()
                yield Duplicate(removed.key, kept_key, self.matcher.similarity(removed, kept), size)


def _edge_tuple(element: tuple[tuple[str, str], tuple[float, int, int]]) -> tuple[str, int, str, int]:
    (a, b), (_, size_a, size_b) = element
    return a, size_a, b, size_b


class NearDuplicates(beam.PTransform):
    """PCollection[Sketch] -> PCollection[Duplicate]: every document to remove and its kept twin.

    Args:
      matcher: how to band and verify (TextMatcher, ImageMatcher, VideoMatcher).
      texts: text only, with `verify="exact"`: PCollection of (key, text) for the exact Jaccard check.
    """

    def __init__(self, matcher: Matcher, texts: beam.PCollection | None = None, label: str | None = None):
        super().__init__(label)
        self.matcher = matcher
        self.texts = texts
        config = getattr(matcher, "config", None)
        self.exact = isinstance(config, MinHashConfig) and config.verify == "exact"
        if self.exact and texts is None:
            raise ValueError("MinHashConfig(verify='exact') needs the texts: NearDuplicates(matcher, texts=...)")

    def expand(self, sketches: beam.PCollection) -> beam.PCollection:
        m = self.matcher
        buckets = (sketches
                   | "band keys" >> beam.FlatMap(_band_entries, m)
                   | "group bands" >> beam.GroupByKey())
        tagged = buckets | "verify buckets" >> beam.ParDo(_BucketPairs(m))
        pairs = split_tagged(tagged, "verify buckets", ("edges", "members"))
        edges = pairs["edges"] | "one edge per pair" >> beam.CombinePerKey(max)
        if self.exact:
            edges = edges | "exact jaccard" >> ExactJaccard(self.texts, m.config)
        members = (pairs["members"]
                   | "group members" >> beam.GroupByKey()
                   | "one sketch per member" >> beam.Map(_first_sketch))
        removed = (edges
                   | "edge tuples" >> beam.Map(_edge_tuple)
                   | "components" >> beam.CombineGlobally(ComponentsFn())
                   | "removed docs" >> beam.FlatMap(lambda rows: rows)
                   | "key by removed" >> beam.Map(_by_removed))
        with_removed = ({"dup": removed, "sketch": members}
                        | "join removed sketch" >> beam.CoGroupByKey()
                        | "key by kept" >> beam.FlatMap(_attach_removed))
        return ({"dup": with_removed, "sketch": members}
                | "join kept sketch" >> beam.CoGroupByKey()
                | "similarity to kept" >> beam.ParDo(_Similarity(m)))


class TextSketches(beam.PTransform):
    """PCollection of (key, text) -> PCollection[Sketch] (MinHash signatures, see text.py)."""

    def __init__(self, config: MinHashConfig, label: str | None = None):
        super().__init__(label)
        self.config = config

    def expand(self, docs: beam.PCollection) -> beam.PCollection:
        config = self.config
        return docs | "minhash" >> beam.MapTuple(lambda key, text: text_sketch(key, text, config))


def _key_edge_by(element, side: int):
    return element[0][side], element


class ExactJaccard(beam.PTransform):
    """Candidate edges -> the edges whose exact shingle Jaccard >= threshold (similarity replaced).

    Shingle hashes are made only for the documents that appear in an edge: the texts are joined
    with the edge keys first, so the cost is one shuffle of the texts plus work on the candidates.
    """

    def __init__(self, texts: beam.PCollection, config: MinHashConfig, label: str | None = None):
        super().__init__(label)
        self.texts = texts
        self.config = config

    def expand(self, edges: beam.PCollection) -> beam.PCollection:
        cfg = self.config
        wanted = (edges | "edge ends" >> beam.FlatMap(lambda e: [(e[0][0], None), (e[0][1], None)])
                  | "distinct ends" >> beam.CombinePerKey(lambda _: None))
        hashes = ({"want": wanted, "text": self.texts}
                  | "texts of edge ends" >> beam.CoGroupByKey()
                  | "shingle hashes" >> beam.FlatMap(_hash_wanted, cfg.ngram))
        first = ({"edge": edges | "key by a" >> beam.Map(_key_edge_by, 0), "hash": hashes}
                 | "join a" >> beam.CoGroupByKey()
                 | "key by b" >> beam.FlatMap(_carry_hash))
        return ({"edge": first, "hash": hashes}
                | "join b" >> beam.CoGroupByKey()
                | "exact check" >> beam.FlatMap(_exact_check, cfg.threshold))


def _hash_wanted(element, ngram: int):
    key, joined = element
    texts = list(joined["text"])
    if list(joined["want"]) and texts:
        yield key, shingle_hashes(texts[0], ngram)


def _carry_hash(element):
    _, joined = element
    for h in joined["hash"]:
        for edge in joined["edge"]:
            yield edge[0][1], (edge, h)


def _exact_check(element, threshold: float):
    _, joined = element
    for hb in joined["hash"]:
        for ((a, b), (_, sa, sb)), ha in joined["edge"]:
            j = exact_jaccard(ha, hb)
            if j >= threshold:
                yield (a, b), (j, sa, sb)
