"""Inputs the way the world serves them: one bad line never costs its neighbours, empty files are counted,
long lines are read in bounded memory. Books, image folders (captions.jsonl) and video lists alike."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from lwmkit.pipelines.books.sources import read_documents
from lwmkit.pipelines.engine.jsonl import split_lines
from lwmkit.pipelines.engine.stages import Dropped
from lwmkit.pipelines.images.sources import SourceOptions, read_pairs
from lwmkit.pipelines.videos.sources import read_videos

from .helpers import record, write_jsonl, write_jsonl_zst
from .image_inputs import rgb

NESTED = b"[" * 100_000
BAD_UTF8 = b'{"text": "caf\xe9"}'


def _split(items):
    good = [x for x in items if not isinstance(x, Dropped)]
    bad = [(d.reason, d.line) for d in items if isinstance(d, Dropped)]
    return good, bad


@pytest.mark.parametrize("writer, name", [(write_jsonl, "b.jsonl"), (write_jsonl_zst, "b.jsonl.zst")])
def test_books_nested_json_costs_only_its_line(tmp_path, writer, name):
    path = writer(tmp_path / name, [record("first"), NESTED, BAD_UTF8, b'{"text": 5}', record("last")])
    docs, bad = _split(list(read_documents(path)))
    assert [d["text"] for d in docs] == ["first", "last"]
    assert bad == [("invalid_json", 2), ("invalid_utf8", 3), ("text_not_string", 4)]


def test_books_nested_reason_names_the_depth(tmp_path):
    path = write_jsonl(tmp_path / "deep.jsonl", [NESTED])
    (item,) = list(read_documents(path))
    assert item.reason == "invalid_json" and "nested too deeply" in item.detail and item.line == 1


@pytest.mark.parametrize("name, data", [
    ("e.jsonl", b""), ("e.jsonl.zst", b""), ("blank.jsonl", b"\n\n  \n"), ("e.txt", b""),
])
def test_books_empty_file_is_counted(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    assert _split(list(read_documents(str(path)))) == ([], [("empty_file", 0)])


def test_captions_jsonl_nested_and_wrong_types_keep_the_next_line(tmp_path):
    (tmp_path / "a.png").write_bytes(rgb(8, 8, seed=1))
    lines = [
        json.dumps({"file": "a.png", "caption": "one"}).encode(),
        NESTED,
        b'{"file": "a.png", "caption": "two"',  # cut short
        json.dumps({"file": ["a.png"], "caption": "x"}).encode(),  # a list where a name belongs
        BAD_UTF8,
        json.dumps({"file": "a.png", "caption": "three"}).encode(),
    ]
    (tmp_path / "captions.jsonl").write_bytes(b"\n".join(lines))
    pairs, bad = _split(list(read_pairs(str(tmp_path / "captions.jsonl"), SourceOptions())))
    assert [p["caption"] for p in pairs] == ["one", "three"]
    assert [p["line"] for p in pairs] == [1, 6]
    assert bad == [("invalid_json", 2), ("invalid_json", 3), ("missing_image", 4), ("invalid_utf8", 5)]


def test_empty_captions_jsonl_is_counted(tmp_path):
    (tmp_path / "captions.jsonl").write_bytes(b"")
    assert _split(list(read_pairs(str(tmp_path / "captions.jsonl"), SourceOptions()))) == ([], [("empty_file", 0)])


def test_video_list_nested_json_and_odd_turns_keep_the_next_row(tmp_path):
    lines = [
        json.dumps({"url": "https://example.com/1.mp4", "caption": "one"}).encode(),
        NESTED,
        json.dumps({"url": "https://example.com/2.mp4", "conversations": "[" * 100_000}).encode(),
        json.dumps({"url": "https://example.com/3.mp4", "caption": "three"}).encode(),
    ]
    path = tmp_path / "videos.jsonl"
    path.write_bytes(b"\n".join(lines))
    videos, bad = _split(list(read_videos(str(path))))
    assert [v["line"] for v in videos] == [1, 4]
    assert [reason for reason, _ in bad] == ["invalid_json", "bad_turns"]
    assert [line for _, line in bad] == [2, 3]


def test_empty_video_list_is_counted(tmp_path):
    path = tmp_path / "videos.jsonl"
    path.write_bytes(b"")
    assert _split(list(read_videos(str(path)))) == ([], [("empty_file", 0)])


def test_split_lines_joins_a_line_spread_over_many_chunks_once():
    line = b"x" * 10_000
    chunks = [line[i:i + 7] for i in range(0, len(line), 7)] + [b"\nab\r\n", b"\n", b"cd"]
    assert list(split_lines(chunks, 20_000)) == [(1, line), (2, b"ab"), (4, b"cd")]
    assert list(split_lines(chunks, 9_999)) == [(1, 10_000), (2, b"ab"), (4, b"cd")]


@pytest.mark.parametrize("writer, name", [(write_jsonl, "long.jsonl"), (write_jsonl_zst, "long.jsonl.zst")])
def test_a_long_line_is_read_in_bounded_memory(tmp_path, writer, name):
    text = "w" * (16 << 20)
    path = writer(tmp_path / name, [record("before"), record(text), record("after")])
    del text
    tracemalloc.start()
    try:
        docs, bad = _split(list(read_documents(path)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bad == [] and [len(d["text"]) for d in docs] == [6, 16 << 20, 5]
    assert peak < 4 * (16 << 20), f"peak {peak / 2**20:.0f} MiB for a 16 MiB line"
