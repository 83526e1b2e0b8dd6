"""Video lists: parquet, CSV and JSONL rows -> videos with captions, turns and clip ranges, or failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lwmkit.pipelines.engine.stages import Dropped
from lwmkit.pipelines.videos.sources import (
    RowError,
    VideoSourceOptions,
    parse_time,
    parse_turns,
    read_videos,
    source_kind,
)


def _jsonl(path: Path, rows: list) -> str:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return str(path)


def _split(items):
    good = [x for x in items if not isinstance(x, Dropped)]
    bad = [(x.line, x.reason) for x in items if isinstance(x, Dropped)]
    return good, bad


def test_webvid_csv(tmp_path):
    csv = tmp_path / "webvid.csv"
    csv.write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        "1056,https://example.com/1056.mp4,PT00H00M12S,dir,A red bus drives by\n"
        '1057,https://example.com/1057.mp4,PT00H00M05S,dir,"Quoted, with a comma"\n'
        "1058,,PT00H00M05S,dir,no url\n",
        encoding="utf-8",
    )
    good, bad = _split(list(read_videos(str(csv))))
    assert [(v["line"], v["key"], v["url"], v["caption"]) for v in good] == [
        (2, "1056", "https://example.com/1056.mp4", "A red bus drives by"),
        (3, "1057", "https://example.com/1057.mp4", "Quoted, with a comma"),
    ]
    assert bad == [(4, "missing_video")]
    meta = json.loads(good[0]["meta"])
    assert meta == {"key": "1056", "source": "csv", "url": "https://example.com/1056.mp4",
                    "video": "https://example.com/1056.mp4",
                    "duration": "PT00H00M12S", "page_dir": "dir"}
    assert good[0]["path"] is None and good[0]["turns"] is None and good[0]["start"] is None


def test_jsonl_paths_times_and_chat(tmp_path):
    rows = [
        {"path": "clips/a.mp4", "caption": "a", "Start_timestamp": "00:00:01.500", "End_timestamp": "00:01:02"},
        {"path": "b.mp4", "conversations": [
            {"from": "human", "value": "<video>\nWhat moves?"}, {"from": "gpt", "value": "A bus."},
            {"from": "human", "value": "Which colour?"}, {"from": "gpt", "value": "Red."}]},
        {"video_id": "v9", "path": "c.mp4", "q": "Who?", "a": "Nobody."},
        {"path": "d.mp4", "qa": [{"question": "One?", "answer": "Yes."}, {"q": "Two?", "a": "No."}],
         "start": 3, "end": 2},
        {"path": "../escape.mp4", "caption": "x"},
        {"path": "/abs/e.mp4", "caption": "x"},
        {"path": "f.mp4", "conversations": [{"from": "gpt", "value": "an answer first"}]},
        {"path": "g.mp4", "start": "soon"},
        b"{not json",
        b"[1, 2]",
    ]
    path = _jsonl(tmp_path / "list.jsonl", rows)
    good, bad = _split(list(read_videos(path)))
    assert bad == [(4, "bad_time"), (5, "unsafe_path"), (6, "unsafe_path"), (7, "bad_turns"), (8, "bad_time"),
                   (9, "invalid_json"), (10, "not_an_object")]
    a, b, c = good
    assert a["path"] == str(tmp_path / "clips" / "a.mp4") and (a["start"], a["end"]) == (1.5, 62.0)
    assert [json.loads(v["meta"])["video"] for v in good] == ["clips/a.mp4", "b.mp4", "c.mp4"]  # not the list
    assert b["turns"] == [["What moves?", "A bus."], ["Which colour?", "Red."]] and b["caption"] is None
    assert c["key"] == "v9" and c["turns"] == [["Who?", "Nobody."]]
    assert a["key"] == "list.jsonl:1"
    allowed, _ = _split(list(read_videos(path, VideoSourceOptions(allow_local=True))))
    assert [v["path"] for v in allowed if v["line"] == 6] == ["/abs/e.mp4"]


def test_parquet_with_columns_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "v.parquet"
    table = pa.table({
        "link": ["https://x.org/1.webm", None],
        "desc": ["one", "two"],
        "qa": [None, json.dumps([{"q": "Q?", "a": "A."}])],
        "start": [0.5, None],
    })
    pq.write_table(table, str(path))
    opts = VideoSourceOptions(url_column="link", caption_column="desc")
    good, bad = _split(list(read_videos(str(path), opts)))
    assert [(v["line"], v["url"], v["caption"], v["start"]) for v in good] == [(1, "https://x.org/1.webm", "one", 0.5)]
    assert bad == [(2, "missing_video")]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    assert [d.reason for d in read_videos(str(tmp_path / "bad.parquet"))] == ["parquet_error"]


def test_unreadable_and_unsupported(tmp_path):
    assert [d.reason for d in read_videos(str(tmp_path / "missing.jsonl"))] == ["unreadable_file"]
    (tmp_path / "latin.csv").write_bytes("url,caption\nhttp://a/b.mp4,caf\xe9\n".encode("latin-1"))
    assert [d.reason for d in read_videos(str(tmp_path / "latin.csv"))] == ["invalid_utf8"]
    with pytest.raises(ValueError, match="unsupported video list"):
        source_kind("videos.tsv")


@pytest.mark.parametrize(
    "value,seconds",
    [(None, None), ("", None), (3, 3.0), (2.5, 2.5), ("7", 7.0), ("01:02", 62.0), ("1:00:00.25", 3600.25)],
)
def test_parse_time(value, seconds):
    assert parse_time(value, "start") == seconds


@pytest.mark.parametrize("value", ["soon", -1, "1:xx", True, float("nan")])
def test_parse_time_refuses(value):
    with pytest.raises(RowError, match="start") as e:
        parse_time(value, "start")
    assert e.value.reason == "bad_time"


def test_parse_turns_refuses_broken_conversations():
    with pytest.raises(RowError, match="unanswered"):
        parse_turns({"conversations": [{"from": "human", "value": "Q?"}]})
    with pytest.raises(RowError, match="not JSON"):
        parse_turns({"conversations": "[{"})
    with pytest.raises(RowError, match="non-empty list"):
        parse_turns({"qa": []})
    with pytest.raises(RowError, match="not text"):
        parse_turns({"question": "Q?", "answer": 3})
    assert parse_turns({"caption": "only"}) is None
