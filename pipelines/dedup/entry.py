"""The one call a job makes to near-deduplicate its examples: `NearDedup`.

    (key, example) --sketch (the kind's hash of `content(example)`)--> Sketch
      --NearDuplicates (bands, buckets, verify, components, survivors)--> Duplicate
      --join with the examples by key--> survivors: (key, example) of every example not removed
                                         failures:  one row per removed example, reason
                                                    "dedup:near_duplicate", naming the kept twin
                                                    and the similarity
                                         counts:    (stage, (seen, kept, dropped)), as `stages.py`
                                         duplicates: Duplicate records (for the manifest's
                                                    histogram and cluster sizes)

An example whose content cannot be sketched (an image Pillow cannot decode, a video without
frames) is not a near-duplicate of anything: it is kept (a later stage rejects it with its own
reason) and counted in the `near_dedup.unsketched` metric. Keys must be unique per example.

Example (books, the example dicts of the books job):
    out = keyed_docs | "near dedup" >> NearDedup(NearDedupOptions("text"), where=file_line)
    out.survivors   # ("b1", {...}), ("b3", {...})
    out.failures    # {"stage": "near_dedup", "file": "a.jsonl", "line": 2,
                    #  "reason": "dedup:near_duplicate", "kept": "b1", "similarity": 0.93,
                    #  "detail": "near copy of b1 (similarity 0.930, cluster of 2)"}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from lwmkit.pipelines.dedup.images import ImageHashConfig, ImageMatcher, image_sketch
from lwmkit.pipelines.dedup.sketch import Duplicate, Sketch
from lwmkit.pipelines.dedup.text import MinHashConfig, TextMatcher, text_sketch
from lwmkit.pipelines.dedup.transforms import NAMESPACE, NearDuplicates
from lwmkit.pipelines.dedup.videos import VideoHashConfig, VideoMatcher, video_sketch
from lwmkit.pipelines.engine.stages import failure_row, split_tagged

REASON = "dedup:near_duplicate"
KINDS = ("text", "image", "video")
_CONFIGS = {"text": MinHashConfig, "image": ImageHashConfig, "video": VideoHashConfig}
_CONTENT_FIELD = {"text": "text", "image": "image", "video": "path"}


@dataclass(frozen=True)
class NearDedupOptions:
    """What to deduplicate and how.

    Attributes:
      kind: "text" (MinHash of word shingles), "image" (pHash) or "video" (pHash per sampled frame).
      config: the kind's config (MinHashConfig, ImageHashConfig, VideoHashConfig); None = defaults.
      stage: the stage name in failure rows, counts and metrics.
    """

    kind: str
    config: MinHashConfig | ImageHashConfig | VideoHashConfig | None = None
    stage: str = "near_dedup"
    _resolved: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"NearDedupOptions.kind must be one of {KINDS}, got {self.kind!r}")
        want = _CONFIGS[self.kind]
        if self.config is not None and not isinstance(self.config, want):
            raise ValueError(f"NearDedupOptions.config for kind {self.kind!r} must be a {want.__name__}, "
                             f"got {type(self.config).__name__}")
        if not self.stage:
            raise ValueError("NearDedupOptions.stage must be a non-empty name")
        object.__setattr__(self, "_resolved", self.config or want())

    def matcher(self) -> TextMatcher | ImageMatcher | VideoMatcher:
        return {"text": TextMatcher, "image": ImageMatcher, "video": VideoMatcher}[self.kind](self._resolved)

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters for the manifest (kind, stage and the matcher's rule)."""
        return {"kind": self.kind, "stage": self.stage, **self.matcher().params()}


def default_content(kind: str) -> Callable[[Any], Any]:
    """The content a kind hashes, from an example dict: text -> "text", image -> "image" (bytes),
    video -> "path" (a local path or a file object)."""
    name = _CONTENT_FIELD[kind]

    def content(example: Any) -> Any:
        return example[name]

    return content


def default_where(key: str, example: Any) -> tuple[str, int]:
    """(file, line) of a failure row: the example dict's "file"/"line" when present, else (key, 0)."""
    if isinstance(example, dict) and "file" in example:
        return str(example["file"]), int(example.get("line", 0))
    return key, 0


def sketch_of(options: NearDedupOptions, key: str, value: Any) -> Sketch:
    """The kind's sketch of `value` under `key`; a `Sketch` given as `value` (one a job made
    earlier and kept in its work store, see `stored.py`) is used as it is, under `key`.

    Raises:
      ValueError, OSError, KeyError, TypeError: the value cannot be sketched.
    """
    if isinstance(value, Sketch):
        if value.key == key:
            return value
        return Sketch(key, value.size, value.values, value.mask, value.step_ms)
    cfg = options._resolved
    if options.kind == "text":
        return text_sketch(key, value, cfg)
    if options.kind == "image":
        return image_sketch(key, value, cfg)
    return video_sketch(key, value, cfg)


class _SketchFn(beam.DoFn):
    def __init__(self, options: NearDedupOptions, content: Callable[[Any], Any]):
        self.options = options
        self.content = content
        self.unsketched = Metrics.counter(NAMESPACE, "unsketched")
        self.sketched = Metrics.counter(NAMESPACE, "sketched")

    def process(self, element: tuple[str, Any]) -> Iterator[Sketch]:
        key, example = element
        try:
            sketch = sketch_of(self.options, key, self.content(example))
        except (ValueError, OSError, KeyError, TypeError):
            self.unsketched.inc()  # kept: not a near-duplicate of anything (see the module docstring)
            return
        self.sketched.inc()
        yield sketch


class NearDedupResult(NamedTuple):
    survivors: beam.PCollection  # (key, example)
    failures: beam.PCollection  # failure rows (dict)
    counts: beam.PCollection  # (stage, (seen, kept, dropped)), one element
    duplicates: beam.PCollection  # Duplicate


def _split(element: tuple[str, dict], stage: str, where: Callable[[str, Any], tuple[str, int]]):
    """Tagged records `(tag, value)` for `split_tagged`: "survivors" (key, example), "failures" rows."""
    key, joined = element
    dups = sorted(joined["dup"], key=lambda d: d.kept)
    for example in joined["example"]:
        if not dups:
            yield "survivors", (key, example)
            continue
        d = dups[0]
        file, line = where(key, example)
        row = failure_row(stage, file, line, REASON, d.detail())
        row.update(kept=d.kept, similarity=round(d.similarity, 6))
        yield "failures", row


def _count(stage: str):
    def fn(pair: tuple[int, int]) -> tuple[str, tuple[int, int, int]]:
        seen, dropped = pair
        return stage, (seen, seen - dropped, dropped)
    return fn


class NearDedup(beam.PTransform):
    """PCollection of (key, example) -> NearDedupResult(survivors, failures, counts, duplicates).

    Args:
      options: the kind and its thresholds (NearDedupOptions).
      content: example -> what the kind hashes (str, image bytes or PIL image, video path or file,
        or an already made `Sketch`, e.g. one read back from the work store); default `default_content(kind)`. Must be picklable (a module-level function or a lambda).
      where: (key, example) -> (file, line) for failure rows; default `default_where`.

    The texts are passed to the exact-Jaccard check when `MinHashConfig(verify="exact")`.
    """

    def __init__(self, options: NearDedupOptions, content: Callable[[Any], Any] | None = None,
                 where: Callable[[str, Any], tuple[str, int]] | None = None, label: str | None = None):
        super().__init__(label)
        self.options = options
        self.content = content or default_content(options.kind)
        self.where = where or default_where

    def expand(self, examples: beam.PCollection) -> NearDedupResult:
        o = self.options
        matcher = o.matcher()
        sketches = examples | "sketch" >> beam.ParDo(_SketchFn(o, self.content))
        texts = None
        if o.kind == "text" and o._resolved.verify == "exact":
            content = self.content
            texts = examples | "texts" >> beam.MapTuple(lambda k, ex: (k, content(ex)))
        dups = sketches | "near duplicates" >> NearDuplicates(matcher, texts=texts)
        tagged = ({"dup": dups | "key dups" >> beam.Map(lambda d: (d.key, d)), "example": examples}
                  | "join examples" >> beam.CoGroupByKey()
                  | "split" >> beam.FlatMap(_split, o.stage, self.where))
        split = split_tagged(tagged, "split", ("survivors", "failures"))
        seen = examples | "count seen" >> beam.combiners.Count.Globally()
        dropped = dups | "count dropped" >> beam.combiners.Count.Globally()
        counts = (seen
                  | "with dropped" >> beam.Map(lambda s, d: (s, d), beam.pvalue.AsSingleton(dropped))
                  | "count row" >> beam.Map(_count(o.stage)))
        return NearDedupResult(split["survivors"], split["failures"], counts, dups)


def duplicate_summary(duplicates: Iterable[Duplicate], bins: int = 10, low: float = 0.5) -> dict[str, Any]:
    """Manifest counts from the removed examples: how many, a similarity histogram over
    [low, 1] in `bins` equal bins, and how many clusters of each size.

    Example:
        >>> duplicate_summary([Duplicate("b", "a", 0.93, 2), Duplicate("c", "x", 1.0, 3),
        ...                    Duplicate("d", "x", 0.85, 3)], bins=5)
        {'removed': 3, 'histogram': {'low': 0.5, 'high': 1.0, 'counts': [0, 0, 0, 1, 2]},
         'cluster_sizes': {'2': 1, '3': 1}}
    """
    dups = list(duplicates)
    counts = [0] * bins
    for d in dups:
        i = min(bins - 1, max(0, int((d.similarity - low) / (1.0 - low) * bins)))
        counts[i] += 1
    clusters: dict[str, set[str]] = {}
    for d in dups:
        clusters.setdefault(d.kept, set()).add(d.key)
    sizes: dict[str, int] = {}
    for members in clusters.values():
        size = str(len(members) + 1)
        sizes[size] = sizes.get(size, 0) + 1
    return {"removed": len(dups), "histogram": {"low": low, "high": 1.0, "counts": counts},
            "cluster_sizes": dict(sorted(sizes.items(), key=lambda kv: int(kv[0])))}
