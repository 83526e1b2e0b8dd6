"""Haystack sources, sentence units, seeded shuffling and fingerprints."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from lwmkit.eval.haystack import Haystack, HaystackError, HaystackSpec, read_documents, split_units

SHARED_TEXT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "text")


def test_split_units_matches_the_docstring_example():
    docs = ["It rained.  We stayed in!", "Dawn came."]
    assert Haystack.from_documents(HaystackSpec(("mem",), seed=0), docs).units == [
        "It rained.",
        "We stayed in!",
        "Dawn came.",
    ]
    # Another seed moves whole documents; sentences keep their order within a document.
    assert Haystack.from_documents(HaystackSpec(("mem",), seed=1), docs).units == [
        "Dawn came.",
        "It rained.",
        "We stayed in!",
    ]


def test_split_units_keeps_quotes_collapses_space_and_bounds_length():
    text = 'He said "Go home." Then\nshe\t left?  Then\n\nnothing  ' + "word " * 50
    units = split_units(text, max_unit_chars=60)
    assert units[0] == 'He said "Go home."'
    assert units[1] == "Then she left?"
    assert units[2] == "Then"  # a blank line (a paragraph break) ends a sentence
    assert all(len(u) <= 60 and u == u.strip() and "  " not in u and "\n" not in u for u in units)
    assert " ".join(units[3:]) == "nothing " + ("word " * 50).strip()


def test_every_source_type_loads(haystack_paths, tok):
    txt, jsonl, zst = haystack_paths
    assert len(read_documents(txt)) == 1
    assert len(read_documents(jsonl)) == 2
    assert len(read_documents(zst)) == 3
    hay = Haystack.load(HaystackSpec(haystack_paths), cache=False)
    assert hay.documents == 6 and len(hay.units) > 100


def test_seed_shuffles_documents_reproducibly(haystack_paths):
    a = Haystack.load(HaystackSpec(haystack_paths, seed=1), cache=False)
    b = Haystack.load(HaystackSpec(haystack_paths, seed=1), cache=False)
    c = Haystack.load(HaystackSpec(haystack_paths, seed=2), cache=False)
    assert a.units == b.units and a.fingerprint == b.fingerprint
    assert sorted(a.units) == sorted(c.units) and a.units != c.units
    assert a.fingerprint != c.fingerprint


BAD_SOURCES = {  # file name -> (its bytes, the error that names it)
    "bad.jsonl": (b'{"text": "fine."}\nnot json\n', r"bad\.jsonl:2: not valid JSON"),
    "latin1.jsonl": (b'{"text": "fine."}\n\n{"text": "caf\xe9"}\n', r"latin1\.jsonl:3: not UTF-8 text"),
    "list.jsonl": (b'["text"]\n', r"list\.jsonl:1: not a JSON object \(got list\)"),
    "deep.jsonl": (b'{"text": "a."}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n", r"deep\.jsonl:2: JSON nested too deeply"),
    "broken.jsonl.zst": (b"not zstd at all", r"broken\.jsonl\.zst: not a readable zstd file"),
    "nofield.jsonl": (b'{"body": "x"}\n', r"nofield\.jsonl:1: no string field 'text'"),
}


@pytest.mark.parametrize("name", BAD_SOURCES)
def test_bad_sources_name_the_file_and_line(tmp_path, name):
    content, error = BAD_SOURCES[name]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(HaystackError, match=error):
        read_documents(str(tmp_path / name))


def test_unknown_missing_and_too_small_sources(tmp_path):
    with pytest.raises(HaystackError, match="unknown haystack type"):
        read_documents(_touch(tmp_path / "x.csv"))
    with pytest.raises(HaystackError, match="no such file"):
        read_documents(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match=r"HaystackSpec.max_unit_chars=10"):
        HaystackSpec(("a.txt",), max_unit_chars=10)


def _touch(path) -> str:
    path.write_text("x")
    return str(path)


def _write_document_dataset(directory, tok, texts, sha=None) -> None:
    """A minimal lwmkit document dataset (what `lwm-pack books` writes under documents/)."""
    from lwmkit.packing.records import FORMAT_VERSION, document_id, encode_document
    from lwmkit.packing.shards import shard_name, write_json_atomic, write_shard

    recs = [
        encode_document(doc_id=document_id(t), source_file="b.jsonl", source_line=i + 1, tokens=tok.encode_document(t))
        for i, t in enumerate(texts)
    ]
    info = write_shard(os.path.join(directory, shard_name("documents", 0, 1)), recs)
    write_json_atomic(
        os.path.join(directory, "manifest.json"),
        {
            "format_version": FORMAT_VERSION,
            "dataset_name": "documents",
            "kind": "document",
            "records": info.records,
            "shards": [info.to_json()],
            "tokenizer": {"sha256": sha or tok.fingerprint()["sha256"]},
        },
    )


def test_document_shards_decode_with_their_tokenizer(tmp_path, tok):
    texts = ["The harbour was quiet. Nobody came.", "A letter arrived at dawn! It was old."]
    _write_document_dataset(str(tmp_path / "docs"), tok, texts)
    assert read_documents(str(tmp_path / "docs"), tokenizer=tok) == texts
    with pytest.raises(HaystackError, match="needs the tokenizer"):
        read_documents(str(tmp_path / "docs"))
    _write_document_dataset(str(tmp_path / "other"), tok, texts, sha="0" * 64)
    with pytest.raises(HaystackError, match="made with tokenizer 000000000000"):
        read_documents(str(tmp_path / "other"), tokenizer=tok)


def test_unit_counts_are_cached_per_tokenizer(hay, tok):
    from lwmkit.eval.fitting import TokenCounter

    counter = TokenCounter(tok)
    idx = np.arange(10)
    first = hay.counts(counter, idx, "dummy")
    calls = counter.calls
    again = hay.counts(counter, idx, "dummy")
    assert counter.calls == calls and np.array_equal(first, again)
    assert first.tolist() == [len(tok.encode(hay.units[i])) for i in range(10)]


@pytest.mark.realdata
def test_shared_public_domain_text_works_out_of_the_box():
    if not os.path.isdir(SHARED_TEXT):
        pytest.skip(f"{SHARED_TEXT} is absent")
    paths = tuple(sorted(os.path.join(SHARED_TEXT, f) for f in os.listdir(SHARED_TEXT) if f.endswith(".txt")))
    hay = Haystack.load(HaystackSpec(paths), cache=False)
    assert hay.documents == len(paths) and len(hay.units) > 10_000
    assert json.dumps(hay.spec.to_json())  # the spec goes into recipes as JSON
