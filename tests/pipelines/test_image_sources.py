"""Reading image-text pairs: webdataset tars (streamed, unsafe names refused), parquet, folders, URL lists."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest
from lwmkit.pipelines.engine.stages import Dropped
from lwmkit.pipelines.images.sources import (
    SourceOptions,
    expand_input,
    read_pairs,
    source_kind,
    split_member,
    unsafe_member_name,
)

from .image_inputs import rgb, write_captions, write_parquet, write_tar

A, B, C = rgb(40, 30, seed=1), rgb(40, 30, seed=2), rgb(40, 30, seed=3)


def read(path, **kw):
    items = list(read_pairs(str(path), SourceOptions(**kw)))
    pairs = [x for x in items if isinstance(x, dict)]
    dropped = [(d.reason, d.line) for d in items if isinstance(d, Dropped)]
    assert len(pairs) + len(dropped) == len(items)
    return pairs, dropped


def test_source_kind_and_folder_expansion(tmp_path):
    assert source_kind("x/shard-0001.tar") == "webdataset"
    assert source_kind("x/shard.TAR.GZ") == "webdataset"
    assert source_kind("x/pairs.parquet") == "parquet"
    assert source_kind("x/captions.jsonl") == "folder"
    with pytest.raises(ValueError, match=r"unsupported image input"):
        source_kind("x/pairs.csv")
    assert expand_input(str(tmp_path)) == os.path.join(str(tmp_path), "captions.jsonl")
    assert expand_input("gs://bucket/x/*.tar") == "gs://bucket/x/*.tar"


@pytest.mark.parametrize(
    "name, unsafe",
    [
        ("00/0001.jpg", False), ("a..b.jpg", False), ("0001.jpg", False),
        ("/etc/passwd", True), ("../up.jpg", True), ("a/../../up.jpg", True), ("a\\..\\up.jpg", True),
        ("C:/x.jpg", True), ("", True),
    ],
)
def test_unsafe_member_names(name, unsafe):
    assert unsafe_member_name(name) is unsafe


def test_webdataset_keys():
    assert split_member("00/0001.jpg") == ("00/0001", "jpg")
    assert split_member("0001.seg.PNG") == ("0001", "seg.png")
    assert split_member("README") == ("README", "")


def test_webdataset_tar(tmp_path):
    path = write_tar(tmp_path / "shard.tar", [
        ("00/0001.jpg", A), ("00/0001.txt", b"a red bus"), ("00/0001.json", b'{"url": "http://x/1.jpg", "exif": "{}"}'),
        ("00/0002.png", B), ("00/0002.json", b'{"caption": "from the json"}'),  # no .txt: json caption
        ("00/0003.webp", C),  # no caption at all: checked by a later stage
        ("00/0004.txt", b"caption without image"),
        ("../evil.jpg", A),
        ("/abs/0005.txt", b"absolute"),
        ("00/0006.jpg", A), ("00/0006.txt", b"\xff\xfe bad utf-8"),
        ("00/0007.jpg", A), ("00/0007.json", b"[1, 2]"),
        ("00/0008.jpg", B), ("00/0008.txt", "caf\u00e9".encode()),
    ])
    pairs, dropped = read(path)
    assert [(p["key"], p["line"], p["caption"]) for p in pairs] == [
        ("00/0001", 1, "a red bus"), ("00/0002", 2, "from the json"), ("00/0003", 3, None), ("00/0008", 9, "café"),
    ]
    assert [p["image"] for p in pairs] == [A, B, C, B]
    assert all(p["url"] is None and p["file"] == path for p in pairs)
    assert json.loads(pairs[0]["meta"]) == {"key": "00/0001", "source": "webdataset", "url": "http://x/1.jpg"}
    assert dropped == [
        ("missing_image", 4), ("unsafe_path", 5), ("unsafe_path", 6), ("invalid_utf8", 7), ("not_an_object", 8),
    ]


def test_tar_links_and_oversized_members(tmp_path):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tar:
        link = tarfile.TarInfo("0001.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
        for name, data in (("0002.jpg", b"x" * 5000), ("0002.txt", b"big"), ("0003.jpg", A), ("0003.txt", b"ok")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pairs, dropped = read(path, max_image_bytes=4096)
    assert [p["key"] for p in pairs] == ["0003"]
    assert dropped == [("not_a_file", 1), ("too_large", 2)]


def test_gzipped_tar(tmp_path):
    path = write_tar(tmp_path / "shard.tar.gz", [("1.png", A), ("1.txt", b"gz")], mode="w:gz")
    pairs, dropped = read(path)
    assert [(p["key"], p["caption"], p["image"]) for p in pairs] == [("1", "gz", A)] and dropped == []


def test_truncated_tar_keeps_the_samples_before_the_damage(tmp_path):
    full = write_tar(tmp_path / "full.tar", [("1.png", A), ("1.txt", b"one"), ("2.png", B * 20), ("2.txt", b"two")])
    data = open(full, "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 512 * 4 + len(A) + 900])  # ends inside 2.png
    pairs, dropped = read(cut)
    assert [p["key"] for p in pairs] == ["1"]
    assert [r for r, _ in dropped] == ["corrupt_tar"]


def test_not_a_tar(tmp_path):
    path = tmp_path / "junk.tar"
    path.write_bytes(b"this is not a tar archive" * 40)
    pairs, dropped = read(path)
    assert pairs == [] and [r for r, _ in dropped] == ["corrupt_tar"]


def test_parquet_with_image_bytes(tmp_path):
    path = write_parquet(tmp_path / "pairs.parquet", {
        "jpg": [A, None, B, b"x" * 5000],
        "caption": ["one", "two", None, "four"],
        "key": ["k1", "k2", "k3", "k4"],
        "license": ["CC0", None, None, None],
    })
    pairs, dropped = read(path, max_image_bytes=4096)
    assert [(p["key"], p["line"], p["caption"], p["image"]) for p in pairs] == [("k1", 1, "one", A), ("k3", 3, None, B)]
    assert json.loads(pairs[0]["meta"]) == {"key": "k1", "source": "parquet", "license": "CC0"}
    assert dropped == [("missing_image", 2), ("too_large", 4)]


def test_parquet_hf_image_structs_and_named_columns(tmp_path):
    path = write_parquet(tmp_path / "hf.parquet", {
        "picture": [{"bytes": A, "path": "a.png"}, {"bytes": None, "path": "b.png"}],
        "alt_text": ["first", "second"],
    })
    pairs, dropped = read(path, image_column="picture", caption_column="alt_text")
    assert [(p["key"], p["caption"], p["image"]) for p in pairs] == [("hf.parquet:1", "first", A)]
    assert dropped == [("missing_image", 2)]


def test_parquet_of_urls(tmp_path):
    path = write_parquet(tmp_path / "urls.parquet", {
        "url": ["http://h/1.jpg", "", "http://h/3.jpg"],
        "caption": ["one", "two", "three"],
    })
    pairs, dropped = read(path)
    assert [(p["url"], p["image"], p["caption"]) for p in pairs] == [
        ("http://h/1.jpg", None, "one"), ("http://h/3.jpg", None, "three"),
    ]
    assert json.loads(pairs[1]["meta"]) == {"key": "urls.parquet:3", "source": "parquet-url", "url": "http://h/3.jpg"}
    assert dropped == [("missing_image", 2)]


def test_parquet_without_image_or_url(tmp_path):
    path = write_parquet(tmp_path / "text.parquet", {"caption": ["a"]})
    assert read(path) == ([], [("no_image_column", 0)])
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    assert [r for r, _ in read(bad)[1]] == ["parquet_error"]


def test_folder_with_captions(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(A)
    (tmp_path / "b.png").write_bytes(B)
    (tmp_path / "secret.png").write_bytes(C)
    path = write_captions(tmp_path, [
        {"file": "imgs/a.png", "caption": "first", "license": "CC0"},
        {"file": "b.png", "caption": "second"},
        b"{broken",
        {"file": "missing.png", "caption": "gone"},
        {"file": "../secret.png", "caption": "escape"},
        {"file": str(tmp_path / "secret.png"), "caption": "absolute"},
        {"caption": "no file"},
        b"",
        {"file": "b.png"},
    ])
    pairs, dropped = read(path)
    assert [(p["key"], p["line"], p["caption"], p["image"]) for p in pairs] == [
        ("imgs/a.png", 1, "first", A), ("b.png", 2, "second", B), ("b.png", 9, None, B),
    ]
    assert json.loads(pairs[0]["meta"]) == {"key": "imgs/a.png", "source": "folder", "license": "CC0"}
    assert dropped == [
        ("invalid_json", 3), ("missing_file", 4), ("unsafe_path", 5), ("unsafe_path", 6), ("missing_image", 7),
    ]


def test_unreadable_file(tmp_path):
    assert read(tmp_path / "nope.tar") == ([], [("unreadable_file", 0)])


@pytest.mark.realdata
def test_real_images_folder():
    from .helpers import SHARED_DATA

    folder = SHARED_DATA / "images"
    if not (folder / "captions.jsonl").exists():
        pytest.skip(f"{folder} is absent (real sample images)")
    pairs, dropped = read(expand_input(str(folder)))
    assert dropped == []
    assert len(pairs) == 12
    assert all(p["image"][:8] == b"\x89PNG\r\n\x1a\n" and p["caption"] for p in pairs)
