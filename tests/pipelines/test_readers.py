"""Reading input files: one dict per document, one `Dropped` (reason, file, line) per bad record."""

from __future__ import annotations

import json
import os
import random
import string

import pytest
from lwmkit.pipelines.books.sources import SUFFIXES, input_kind, iter_texts, read_documents
from lwmkit.pipelines.engine.stages import Dropped

from .helpers import jsonl_bytes, record, write_jsonl, write_jsonl_zst, write_parquet, zstd

READER_REASONS = {
    "unreadable_file", "corrupt_zstd", "invalid_utf8", "invalid_unicode", "invalid_json",
    "not_an_object", "missing_text", "text_not_string", "line_too_long", "parquet_error", "bad_record", "empty_file",
}


def read(path, text_key="text"):
    items = list(read_documents(str(path), text_key))
    docs = [x for x in items if isinstance(x, dict)]
    dropped = [x for x in items if isinstance(x, Dropped)]
    assert len(docs) + len(dropped) == len(items)
    return docs, dropped


def where(dropped):
    return [(d.reason, os.path.basename(d.file), d.line) for d in dropped]


# --- good inputs ---------------------------------------------------------------------------------


def test_jsonl_zst(tmp_path):
    path = write_jsonl_zst(
        tmp_path / "books.jsonl.zst",
        [record("Call me Ishmael.", {"title": "Moby Dick", "author": "Melville"}), "", record("Second.")],
    )
    docs, dropped = read(path)
    assert dropped == []
    assert docs == [
        {"file": path, "line": 1, "text": "Call me Ishmael.", "meta": '{"author": "Melville", "title": "Moby Dick"}'},
        {"file": path, "line": 3, "text": "Second.", "meta": None},  # blank line 2 is skipped, still counted
    ]


@pytest.mark.parametrize("name", ["a.jsonl.zstd", "a.json.zst", "UPPER.JSONL.ZST"])
def test_other_zstd_suffixes(tmp_path, name):
    path = write_jsonl_zst(tmp_path / name, [record("x")])
    assert [d["text"] for d in read(path)[0]] == ["x"]


def test_zst_reads_across_frames(tmp_path):
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(zstd(jsonl_bytes([record("one"), record("two")])) + zstd(jsonl_bytes([record("three")])))
    docs, dropped = read(path)
    assert dropped == []
    assert [(d["line"], d["text"]) for d in docs] == [(1, "one"), (2, "two"), (3, "three")]


def test_jsonl_with_crlf_and_unicode(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(record("caf\u00e9 \U0001f600 \u6f22", {"k": "\u00fc"}) + b"\r\n" + record("b") + b"\r\n")
    docs, dropped = read(path)
    assert dropped == []
    assert [(d["line"], d["text"], d["meta"]) for d in docs] == [
        (1, "caf\u00e9 \U0001f600 \u6f22", '{"k": "\u00fc"}'),
        (2, "b", None),
    ]


def test_text_key(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [json.dumps({"body": "the body", "text": 3})])
    docs, dropped = read(path, text_key="body")
    assert dropped == [] and [d["text"] for d in docs] == ["the body"]


def test_txt_is_one_document(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("line one\r\nline two\n\u00e9\n".encode())
    docs, dropped = read(path)
    assert dropped == []
    assert docs == [{"file": str(path), "line": 1, "text": "line one\r\nline two\n\u00e9\n", "meta": None}]


def test_parquet(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", ["first", "second"], [{"title": "A"}, None])
    docs, dropped = read(path)
    assert dropped == []
    assert docs == [
        {"file": path, "line": 1, "text": "first", "meta": '{"title": "A"}'},
        {"file": path, "line": 2, "text": "second", "meta": None},
    ]


def test_parquet_binary_text_column_and_custom_key(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"content": pa.array(["caf\u00e9".encode(), b"plain"], pa.binary())}), str(path))
    docs, dropped = read(path, text_key="content")
    assert dropped == []
    assert [(d["line"], d["text"], d["meta"]) for d in docs] == [(1, "caf\u00e9", None), (2, "plain", None)]


def test_parquet_many_batches_keep_row_numbers(tmp_path):
    texts = [f"row {i}" for i in range(1, 701)]  # more than one 256-row batch
    docs, dropped = read(write_parquet(tmp_path / "many.parquet", texts))
    assert dropped == []
    assert [(d["line"], d["text"]) for d in docs] == [(i, f"row {i}") for i in range(1, 701)]


def test_iter_texts_skips_failures(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [record("one"), "{broken", record("two")])
    assert list(iter_texts(path)) == ["one", "two"]


# --- failures --------------------------------------------------------------------------------------


def test_every_jsonl_failure_reason_with_file_and_line(tmp_path):
    lines = [
        record("good 1"),  # 1
        b'{"text": "cut short',  # 2 invalid_json
        b'{"text": "bad \xff byte"}',  # 3 invalid_utf8
        record("good 2"),  # 4
        b"[1, 2, 3]",  # 5 not_an_object
        b'"just a string"',  # 6 not_an_object
        b'{"meta": {"title": "no text"}}',  # 7 missing_text
        b'{"text": null}',  # 8 missing_text
        b'{"text": 42}',  # 9 text_not_string
        b'{"text": ["a", "b"]}',  # 10 text_not_string
        b"   ",  # 11 blank: skipped
        record("good 3"),  # 12
    ]
    for name, write in (("a.jsonl", write_jsonl), ("a.jsonl.zst", write_jsonl_zst)):
        path = write(tmp_path / name, lines)
        docs, dropped = read(path)
        assert [(d["line"], d["text"]) for d in docs] == [(1, "good 1"), (4, "good 2"), (12, "good 3")]
        assert where(dropped) == [
            ("invalid_json", name, 2),
            ("invalid_utf8", name, 3),
            ("not_an_object", name, 5),
            ("not_an_object", name, 6),
            ("missing_text", name, 7),
            ("missing_text", name, 8),
            ("text_not_string", name, 9),
            ("text_not_string", name, 10),
        ]
        assert all(d.file == path and d.detail for d in dropped)


def test_txt_invalid_utf8(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine line\nsecond\nthird \xc3\x28 here\n")
    docs, dropped = read(path)
    assert docs == []
    assert where(dropped) == [("invalid_utf8", "bad.txt", 1)]
    assert "line 3" in dropped[0].detail


def test_unreadable_file(tmp_path):
    missing = tmp_path / "missing.jsonl"
    docs, dropped = read(missing)
    assert docs == [] and where(dropped) == [("unreadable_file", "missing.jsonl", 0)]
    a_dir = tmp_path / "dir.jsonl.zst"
    a_dir.mkdir()
    docs, dropped = read(a_dir)
    assert docs == [] and where(dropped) == [("unreadable_file", "dir.jsonl.zst", 0)]


def test_corrupt_zstd(tmp_path):
    path = tmp_path / "garbage.jsonl.zst"
    path.write_bytes(b"this was never compressed\n" * 4)
    docs, dropped = read(path)
    assert docs == []
    assert where(dropped) == [("corrupt_zstd", "garbage.jsonl.zst", 1)]
    assert "after 0 complete lines" in dropped[0].detail


def test_corrupt_zstd_block_is_reported(tmp_path):
    data = zstd(jsonl_bytes([record(f"document {i} " * 20) for i in range(50)]), checksum=True)
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    path = tmp_path / "flipped.jsonl.zst"
    path.write_bytes(bytes(damaged))
    _, dropped = read(path)
    assert [d.reason for d in dropped] == ["corrupt_zstd"]


def test_corrupt_zstd_after_more_than_a_buffer_keeps_earlier_lines(tmp_path):
    # Lines decompressed before the damaged block survive it.
    lines = [record(f"{i} " + "x" * 1000) for i in range(3000)]  # ~3 MB
    path = tmp_path / "long.jsonl.zst"
    path.write_bytes(zstd(jsonl_bytes(lines)) + b"garbage after the frame")
    docs, dropped = read(path)
    assert len(docs) >= 2000
    assert [d["text"] for d in docs] == [json.loads(x)["text"] for x in lines[: len(docs)]]
    assert where(dropped) == [("corrupt_zstd", "long.jsonl.zst", len(docs) + 1)]


def test_corrupt_zstd_keeps_every_complete_line_before_the_damage(tmp_path):
    lines = [record(f"document {i}") for i in range(20)]
    path = tmp_path / "tail.jsonl.zst"
    path.write_bytes(zstd(jsonl_bytes(lines)) + b"garbage after the frame")
    docs, dropped = read(path)
    assert where(dropped) == [("corrupt_zstd", "tail.jsonl.zst", 21)]
    assert [d["text"] for d in docs] == [f"document {i}" for i in range(20)]


def _truncated(tmp_path, cut: int, size: int = 1000):
    """A jsonl.zst of 200 records of about `size` characters, with `cut` bytes cut off its end.

    zstd blocks hold up to 128 KiB: 200 x ~1000 characters make two, 200 x ~30 make one.
    """
    rng = random.Random(size)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(500)]
    lines = [record(f"{i:03d} " + " ".join(rng.choices(words, k=size // 6)), {"i": i}) for i in range(200)]
    data = zstd(jsonl_bytes(lines), checksum=False)
    path = tmp_path / "truncated.jsonl.zst"
    path.write_bytes(data[:-cut])
    return lines, path


@pytest.mark.parametrize("cut", [1, 16, 1000])
def test_truncated_zstd_keeps_complete_lines_as_a_prefix(tmp_path, cut):
    lines, path = _truncated(tmp_path, cut)
    docs, dropped = read(path)
    assert 0 < len(docs) < len(lines)
    # What is kept is exactly the original lines, in order, from the start: nothing invented.
    assert [(d["line"], d["text"], d["meta"]) for d in docs] == [
        (i + 1, json.loads(x)["text"], json.dumps(json.loads(x)["meta"])) for i, x in enumerate(lines[: len(docs)])
    ]
    # The half line at the cut is not parsed as JSON: the file is reported as truncated there.
    assert where(dropped) == [("corrupt_zstd", "truncated.jsonl.zst", len(docs) + 1)]
    assert "truncated" in dropped[0].detail


def test_truncated_single_block_zstd_is_reported(tmp_path):
    lines, path = _truncated(tmp_path, 16, size=30)
    docs, dropped = read(path)
    assert where(dropped) == [("corrupt_zstd", "truncated.jsonl.zst", len(docs) + 1)]


@pytest.mark.parametrize("cut, size", [(16, 1000), (1000, 1000), (16, 30)], ids=["two-blocks", "cut-deep", "one-block"])
def test_truncated_zstd_reports_corrupt_zstd(tmp_path, cut, size):
    lines, path = _truncated(tmp_path, cut, size)
    docs, dropped = read(path)
    assert "corrupt_zstd" in [d.reason for d in dropped]


def test_truncated_second_frame_is_reported(tmp_path):
    first = [record(f"first frame {i}") for i in range(10)]
    second = [record(f"second frame {i}") for i in range(10)]
    path = tmp_path / "two-frames.jsonl.zst"
    path.write_bytes(zstd(jsonl_bytes(first)) + zstd(jsonl_bytes(second))[:-8])
    docs, dropped = read(path)
    assert [d["text"] for d in docs] == [f"first frame {i}" for i in range(10)]
    assert [d.reason for d in dropped] == ["corrupt_zstd"]


def test_parquet_failures(tmp_path):
    import pyarrow as pa

    path = write_parquet(tmp_path / "rows.parquet", [b"ok", b"\xff\xfe bad", None, b"also ok"], text_type=pa.binary())
    docs, dropped = read(path)
    assert [(d["line"], d["text"]) for d in docs] == [(1, "ok"), (4, "also ok")]
    assert where(dropped) == [("invalid_utf8", "rows.parquet", 2), ("missing_text", "rows.parquet", 3)]

    ints = write_parquet(tmp_path / "ints.parquet", [1, 2])
    assert where(read(ints)[1]) == [("text_not_string", "ints.parquet", 1), ("text_not_string", "ints.parquet", 2)]

    import pyarrow.parquet as pq

    no_col = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["x"]}), str(no_col))
    docs, dropped = read(no_col)
    assert docs == [] and where(dropped) == [("missing_text", "nocol.parquet", 0)]
    assert "body" in dropped[0].detail  # names the columns it found

    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not a parquet file")
    docs, dropped = read(garbage)
    assert docs == [] and where(dropped) == [("parquet_error", "garbage.parquet", 0)]


def test_corrupt_parquet_page_keeps_rows_before_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pages.parquet"
    texts = [f"row {i} " * 20 for i in range(3000)]
    pq.write_table(pa.table({"text": texts}), str(path), row_group_size=500, compression="snappy")
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 200] = b"\x00" * 200
    path.write_bytes(bytes(data))
    docs, dropped = read(path)
    assert 0 < len(docs) < len(texts)
    assert [d["text"] for d in docs] == texts[: len(docs)]
    assert where(dropped) == [("parquet_error", "pages.parquet", len(docs) + 1)]


def test_parquet_meta_with_a_date_keeps_the_rows(tmp_path):
    import datetime

    path = write_parquet(
        tmp_path / "dated.parquet",
        ["first book", "second book"],
        [{"published": datetime.date(2020, 1, 2)}, {"published": datetime.date(2021, 3, 4)}],
    )
    docs, dropped = read(path)
    assert where(dropped) == []
    assert [(d["line"], d["text"]) for d in docs] == [(1, "first book"), (2, "second book")]


def test_reasons_cover_the_docstring():
    import lwmkit.pipelines.books.sources as readers

    documented = set(readers.__doc__.split("Failure reasons:", 1)[1].split(".\n", 1)[0].replace("`", "").replace(",", " ").split())
    assert documented == READER_REASONS


@pytest.mark.parametrize(
    "name, kind",
    [("a.jsonl.zst", "jsonl.zst"), ("a.JSONL", "jsonl"), ("b.txt", "txt"), ("c.parquet", "parquet"), ("d.json.zst", "jsonl.zst")],
)
def test_input_kind(name, kind):
    assert input_kind(name) == kind


@pytest.mark.parametrize("name", ["a.json", "a.csv", "a.jsonl.gz", "a.zst", "noext"])
def test_unsupported_suffix_raises(tmp_path, name):
    with pytest.raises(ValueError, match="unsupported input type") as e:
        input_kind(name)
    assert name in str(e.value) and all(s in str(e.value) for s in SUFFIXES)
    with pytest.raises(ValueError, match="unsupported input type"):
        list(read_documents(str(tmp_path / name)))


def test_lone_surrogate_from_a_json_escape_is_invalid_unicode(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "bad \\ud800 text"}\n')
    docs, dropped = read(path)
    assert [d["text"] for d in docs] == ["fine"]
    assert where(dropped) == [("invalid_unicode", "s.jsonl", 2)]
    assert "U+D800" in dropped[0].detail


def test_a_zstd_bomb_is_dropped_without_being_held_in_memory(tmp_path):
    """1 GiB of zeros (32 KiB compressed, one endless line) between two good lines."""
    import resource

    import zstandard

    c = zstandard.ZstdCompressor()
    path = tmp_path / "bomb.jsonl.zst"
    path.write_bytes(c.compress(record("first book") + b"\n") + c.compress(b"\0" * (1 << 30)) + c.compress(b"\n" + record("last book")))
    assert path.stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    docs, dropped = read(path)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert [d["text"] for d in docs] == ["first book", "last book"]
    assert where(dropped) == [("line_too_long", "bomb.jsonl.zst", 2)]
    assert "1,073,741,824 bytes" in dropped[0].detail
    assert grown < 700 << 10, f"peak memory grew by {grown} KiB"


def test_an_over_long_line_in_the_middle_of_a_chunk(tmp_path):
    from lwmkit.pipelines.books import sources as readers

    lines = [record("a"), b"x" * 5000, record("b"), b"y" * 3000, record("c")]
    items = list(readers._lines_of("f", iter([b"\n".join(lines)[i : i + 700] for i in range(0, 20000, 700)]), "text",
                                   (), "corrupt", max_line_bytes=1000))
    assert [(x.reason, x.line) if isinstance(x, Dropped) else x["text"] for x in items] == [
        "a", ("line_too_long", 2), "b", ("line_too_long", 4), "c"]
