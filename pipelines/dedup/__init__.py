"""Near-duplicate removal for books, images and videos, as Beam stages that scale past one machine.

One flow for every kind (transforms.py): sketch each document, put each sketch in the LSH buckets
its bands name, verify the pairs that share a bucket, join the verified pairs into connected
components, keep one survivor per component (the largest, then the smallest key) and report every
other member as a `Duplicate(key, kept, similarity, cluster_size)`.

    kind    sketch (module)                         match rule (defaults)
    books   MinHash of word 5-grams (text.py)       estimated Jaccard >= 0.8, 14 bands x 9 rows
    images  64-bit pHash (images.py)                Hamming <= 12, 32 bands x 10 bits
    videos  pHash per frame every 0.5 s (videos.py) >= 80% of aligned frames within Hamming 12

Sketches are small numpy arrays with a byte codec (sketch.py) so a work store can keep them and a
rerun need not recompute them. Each matcher's `params()` is the JSON-ready record for a manifest.

Jobs call one transform (entry.py): `NearDedup(NearDedupOptions(kind), content=..., where=...)` on
(key, example) pairs returns survivors, failure rows (reason "dedup:near_duplicate", naming the
kept twin and the similarity), counts and the `Duplicate` records.

Example, books, the stages one by one:
    sketches = docs | TextSketches(MinHashConfig())       # (key, text) -> Sketch
    dups = sketches | NearDuplicates(TextMatcher())       # -> Duplicate("b2", "b1", 0.93, 2), ...

Public names load on first use; nothing here imports JAX.
"""

from lwmkit.pipelines import lazy_exports

_EXPORTS = {
    "Sketch": "sketch",
    "Duplicate": "sketch",
    "SketchMismatch": "sketch",
    "encode_sketch": "sketch",
    "decode_sketch": "sketch",
    "Banding": "bands",
    "optimal_bands": "bands",
    "candidate_probability": "bands",
    "MinHashConfig": "text",
    "TextMatcher": "text",
    "text_sketch": "text",
    "words": "text",
    "shingles": "text",
    "ImageHashConfig": "images",
    "ImageMatcher": "images",
    "image_sketch": "images",
    "VideoHashConfig": "videos",
    "VideoMatcher": "videos",
    "video_sketch": "videos",
    "clip_similarity": "videos",
    "components": "clusters",
    "survivors": "clusters",
    "Matcher": "transforms",
    "NearDuplicates": "transforms",
    "TextSketches": "transforms",
    "ExactJaccard": "transforms",
    "NearDedup": "entry",
    "NearDedupOptions": "entry",
    "NearDedupResult": "entry",
    "duplicate_summary": "entry",
    "REASON": "entry",
    "sketch_of": "entry",
    "CarrySketch": "stored",
    "StoredSketch": "stored",
    "near_dedup_elements": "stored",
    "SKETCH_FIELD": "stored",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
