"""The corpus report: one self-contained HTML page with inlined PNG plots, from a real books job.

One module-scoped books run (`built`) over generated books in a folder whose name holds HTML
special characters backs every check; variants edit copies of its manifests (old manifests without
the new keys, vision tokens, a "stages" job) instead of running the job again.
"""

from __future__ import annotations

import base64
import collections
import html
import json
import os
import shutil
import struct
from html.parser import HTMLParser

import pytest
from lwmkit.pipelines import BooksOptions, run_books
from lwmkit.pipelines.tools.report import write_report
from lwmkit.pipelines.tools.sample_corpus import write_sample_corpus

SEQ_LENS = (512, 2048)
RAW_NAME = 'raw<b>&"x\''  # must appear escaped, never as markup
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NEW_KEYS = ("segments_per_record", "loss_weight_by_modality", "cuts")


class _Page(HTMLParser):
    """Collects section titles, images and the per-dataset summary rows of a report."""

    def __init__(self, text: str):
        super().__init__()
        self.h2: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.rows: dict[str, list[str]] = {}
        self.skipped: list[str] = []
        self._tag: str | None = None
        self._row: str | None = None
        self._in_td = False
        self._skip = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._tag = tag
        if tag == "img":
            self.imgs.append(a)
        elif tag == "tr" and "data-dataset" in a:
            self._row = a["data-dataset"]
            self.rows[self._row] = []
        elif tag == "td" and self._row is not None:
            self._in_td = True
            self.rows[self._row].append("")
        elif tag == "p" and "skipped" in (a.get("class") or "").split():
            self._skip = True
            self.skipped.append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        elif tag == "td":
            self._in_td = False
        elif tag == "p":
            self._skip = False
        self._tag = None

    def handle_data(self, data):
        if self._tag == "h2":
            self.h2.append(data)
        if self._in_td and self._row is not None:
            self.rows[self._row][-1] += data
        if self._skip:
            self.skipped[-1] += data


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _pngs(page: _Page) -> list[bytes]:
    out = []
    for img in page.imgs:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix), img["src"][:40]
        assert img.get("alt")
        out.append(base64.b64decode(img["src"][len(prefix):], validate=True))
    return out


def _read_alt(page: _Page) -> str:
    return " ".join(img["alt"] for img in page.imgs)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _manifest(path: str) -> dict:
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def _edit(path: str, fn) -> None:
    m = _manifest(path)
    fn(m)
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(m, f)


@pytest.fixture(scope="module")
def built(tmp_path_factory, bpe_model) -> str:
    base = tmp_path_factory.mktemp("report")
    files = write_sample_corpus(str(base / RAW_NAME), books=4, seed=3)
    out = str(base / "out")
    run_books(BooksOptions(inputs=tuple(files), output=out, tokenizer=bpe_model, seq_lens=SEQ_LENS))
    return out


@pytest.fixture()
def copy(built, tmp_path) -> str:
    dest = str(tmp_path / "copy")
    shutil.copytree(built, dest, ignore=shutil.ignore_patterns("report"))
    return dest


def test_page_has_every_section_and_valid_inline_pngs(built):
    path = write_report(built)
    assert path == os.path.join(built, "report", "index.html")
    text = _read(path)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    page = _Page(text)
    for title in ("Summary", "Document length", "Fill", "Modality mix", "Loss-weight mass by modality",
                  "Segments per record", "Cuts and failures"):
        assert title in page.h2
    # The books job writes text only: the modality mix is the one plot replaced by a note.
    assert len(page.skipped) == 1 and "no dataset holds vision tokens" in page.skipped[0]
    pngs = _pngs(page)
    assert len(pngs) == 5
    for data in pngs:
        width, height = _png_size(data)
        assert 500 <= width <= 1400 and 200 <= height <= 1400, (width, height)
        assert len(data) > 5_000
    assert os.listdir(os.path.join(built, "report")) == ["index.html"]  # self-contained


def test_summary_numbers_come_from_the_manifests(built):
    page = _Page(_read(write_report(built)))
    job = _manifest(built)
    assert list(page.rows) == ["documents", "packed-512", "packed-2048"]  # by seq_len, not as strings
    assert sorted(page.rows) == sorted(job["datasets"])
    for name in job["datasets"]:
        m = _manifest(os.path.join(built, name))
        row = page.rows[name]
        assert row[0] == name and row[1] == m["kind"]
        assert row[3] == f"{m['documents']:,}"
        assert row[4] == f"{m['tokens']['total']:,}"
        assert row[6] == f"{m['records']:,}"
        if m["kind"] == "packed":
            assert row[2] == f"{m['seq_len']:,}"
            assert row[7] == f"{100 * m['fill']:.2f}%"
            assert row[8] == f"{m['segments']:,}"
    text = _read(os.path.join(built, "report", "index.html"))
    assert job["tokenizer"]["sha256"] in text
    assert html.escape(job["runner"]) in text
    assert job["timestamps"]["finished_at"] in text
    assert "read:invalid_json" in text  # the sample corpus's malformed line


def test_text_from_manifests_is_escaped(built):
    text = _read(write_report(built))
    assert RAW_NAME not in text and "<b>" not in text
    assert html.escape(RAW_NAME) in text


def test_report_is_byte_identical_when_written_twice(built, tmp_path):
    first = open(write_report(built, str(tmp_path / "a")), "rb").read()
    second = open(write_report(built, str(tmp_path / "b")), "rb").read()
    assert first == second


def _segments_from_parquet(dataset: str) -> collections.Counter:
    import pyarrow.parquet as pq

    per_record = collections.Counter(
        p["index"] for pieces in pq.read_table(os.path.join(dataset, "documents.parquet")).column("pieces").to_pylist()
        for p in pieces
    )
    return collections.Counter(per_record.values())


def test_old_manifests_fall_back_to_shards_and_older_keys(copy):
    for name in _manifest(copy)["datasets"]:
        _edit(os.path.join(copy, name), lambda m: [m.pop(k, None) for k in NEW_KEYS])
    text = _read(write_report(copy))
    page = _Page(text)
    assert len(_pngs(page)) == 5
    assert "their loss_weight_sum is shown as text" in text
    assert "(from packing.documents_split)" in text
    for seq_len in SEQ_LENS:
        name = f"packed-{seq_len}"
        counts = _segments_from_parquet(os.path.join(copy, name))
        mean = sum(k * v for k, v in counts.items()) / sum(counts.values())
        records = _manifest(os.path.join(copy, name))["records"]
        assert f"{name}: mean {mean:.2f} segments per record, max {max(counts)}, from all {records:,} records (read from the shards)" in text


@pytest.mark.parametrize("schedule_key", ["stages", "stages_schedule"])
def test_new_keys_vision_tokens_and_a_stages_job(copy, schedule_key):
    def vision(m):
        if m["kind"] == "packed":
            m["tokens"]["vision"] = 300
            m["tokens"]["text"] = m["tokens"]["total"] - 300
            m["loss_weight_by_modality"] = {"text": m["loss_weight_sum"] - 250, "vision": 250.0}
            m["segments_per_record"] = {"1": m["records"] - 2, "3": 2}
            m["cuts"] = {"documents_split": 2, "documents_truncated": 1, "documents_dropped": 0, "tokens_dropped": 77}

    for name in _manifest(copy)["datasets"]:
        _edit(os.path.join(copy, name), vision)

    def stages(m):
        m["kind"] = "stages"
        m[schedule_key] = [
            {"seq_len": n, "records": 10 + i, "tokens": 1000 * n, "fill": 0.9 + i / 100, "rope_theta": 10_000 * 10**i,
             "documents_long_enough": 4 - i, "min_doc_tokens": n // 2}
            for i, n in enumerate(SEQ_LENS)
        ]

    _edit(copy, stages)
    text = _read(write_report(copy))
    page = _Page(text)
    assert page.skipped == []
    assert len(_pngs(page)) == 6  # modality mix is drawn now
    assert "Context stages" in text and "fill per context stage" in _read_alt(page)
    assert "10,000" in text and "100,000" in text  # rope_theta per stage
    assert "packed-512: 0." in text  # vision share in the modality details
    assert "from all " in text and "(manifest)" in text
    assert "<td class=num>77</td>" in text  # tokens_dropped from the new cuts key
    assert "their loss_weight_sum is shown as text" not in text


@pytest.mark.parametrize(("name", "plots"), [("packed-512", 5), ("documents", 2)])
def test_a_single_dataset_directory(built, tmp_path, name, plots):
    page = _Page(_read(write_report(os.path.join(built, name), str(tmp_path / "one"))))
    assert list(page.rows) == [name]
    assert len(_pngs(page)) == plots  # documents/: lengths and failures; no packing to plot
    assert len(page.skipped) == 6 - plots


def test_warnings_order_empty_stages_and_dict_cells(copy):
    import pyarrow.parquet as pq

    warning = "the VQGAN is randomly initialised <seed 0>: its codes mean nothing"
    _edit(copy, lambda m: m.update(warnings=[warning]))
    _edit(os.path.join(copy, "packed-2048"), lambda m: m.update(warnings=[warning, "a dataset warning"]))
    # An empty smallest stage: its documents.parquet has no rows, its fill is 0 for no records.
    table = pq.read_table(os.path.join(copy, "packed-512", "documents.parquet"))
    pq.write_table(table.slice(0, 0), os.path.join(copy, "packed-512", "documents.parquet"))
    _edit(os.path.join(copy, "packed-512"), lambda m: m.update(records=0, fill=0.0))
    os.remove(os.path.join(copy, "documents", "documents.parquet"))

    def stages(m):
        m["kind"] = "stages"
        m["stages_schedule"] = [  # as JSON's sorted keys or a caller might list them: not by length
            {"seq_len": n, "records": r, "tokens": {"total": t, "text": t, "vision": 0}, "fill": f}
            for n, r, t, f in [(1048576, 3, 3_000_000, 0.95), (512, 0, 0, 0.0), (32768, 7, 200_000, 0.875)]
        ]

    _edit(copy, stages)
    text = _read(write_report(copy))
    page = _Page(text)
    assert f"<span class=warning>{html.escape(warning)}</span>" in text and text.count(html.escape(warning)) == 1
    assert "a dataset warning" in text
    assert list(page.rows) == ["documents", "packed-512", "packed-2048"]
    assert page.rows["packed-512"][7] == "no records" and "0.00%" not in text
    stage_table = text[text.index("<table class=stages>"):]
    stage_table = stage_table[: stage_table.index("</table>")]
    assert stage_table.index("512") < stage_table.index("32,768") < stage_table.index("1,048,576")
    assert "{" not in stage_table and "total 3,000,000<br>text 3,000,000<br>vision 0" in stage_table
    assert "no records" in stage_table
    assert "From <code>packed-2048/documents.parquet</code>" in text  # not the empty stage's table
