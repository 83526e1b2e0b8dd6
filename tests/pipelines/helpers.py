"""Writers for the input files the pipeline tests feed the books job (jsonl, jsonl.zst, txt, parquet),
and what the job tests share to read and compare outputs and to reach their local servers."""

from __future__ import annotations

import filecmp
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import zstandard

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def unset_proxies(monkeypatch) -> None:
    """The test servers are local: a proxy from the environment would not reach them."""
    for k in PROXY_VARS:
        monkeypatch.delenv(k, raising=False)


def record(text, meta=None) -> bytes:
    """One jsonl line (without the newline) of a Books3-style record."""
    obj = {"text": text} if meta is None else {"text": text, "meta": meta}
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def jsonl_bytes(lines: Sequence[bytes | str]) -> bytes:
    return b"".join((x.encode("utf-8") if isinstance(x, str) else x) + b"\n" for x in lines)


def write_jsonl(path: str | os.PathLike, lines: Sequence[bytes | str]) -> str:
    Path(path).write_bytes(jsonl_bytes(lines))
    return str(path)


def zstd(data: bytes, checksum: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=checksum).compress(data)


def write_jsonl_zst(path: str | os.PathLike, lines: Sequence[bytes | str]) -> str:
    Path(path).write_bytes(zstd(jsonl_bytes(lines)))
    return str(path)


def write_parquet(path: str | os.PathLike, texts: list, metas: list | None = None, text_type=None) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"text": pa.array(texts, text_type)}
    if metas is not None:
        cols["meta"] = pa.array(metas)
    pq.write_table(pa.table(cols), str(path))
    return str(path)


def book(seed: int, paragraphs: int = 6) -> str:
    """A generated book (distinct per seed) from the sample corpus generator."""
    from lwmkit.pipelines.tools.sample_corpus import sample_book

    return sample_book(random.Random(seed), paragraphs)


def write_small_raw_books(d: str | os.PathLike) -> str:
    """A folder of raw books the CLI tests read: four books in a .jsonl.zst (and one broken line
    after them) and a .txt book; returns the folder."""
    d = Path(d)
    write_jsonl_zst(d / "books.jsonl.zst", [record(book(i, 6 + 4 * i), {"n": i}) for i in range(4)] + [b"{bad"])
    (d / "extra.txt").write_text(book(9, 8), encoding="utf-8")
    return str(d)


def count_sketch_calls(monkeypatch, name: str) -> list:
    """Wraps `lwmkit.pipelines.dedup.entry.<name>` (a sketch function `(key, content, config)`) so
    that every key it sketches is appended to the returned list."""
    from lwmkit.pipelines.dedup import entry

    calls: list = []
    real = getattr(entry, name)

    def counting(key, content, config):
        calls.append(key)
        return real(key, content, config)

    monkeypatch.setattr(entry, name, counting)
    return calls


def read_json(path):
    """The JSON value of a file (a manifest)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_failures(out) -> list[dict]:
    """The rows of a job output's failures.jsonl."""
    with open(os.path.join(out, "failures.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def vqgan_job_fields(inputs, output, tokenizer: str, seq_lens, generation_fraction: float, seed: int) -> dict:
    """The options fields the image and video job tests share: their corpus, output and tokenizer,
    the tiny random VQGAN in batches of 4, and the packed lengths and example choice."""
    return dict(inputs=tuple(inputs), output=str(output), tokenizer=tokenizer, vqgan_preset="tiny",
                batch_size=4, seq_lens=seq_lens, generation_fraction=generation_fraction, seed=seed)


def documents_by_source(out: Path) -> dict[tuple[str, int], dict]:
    """(file, line) -> the document record of a job output, with its documents.parquet row's `meta`."""
    import pyarrow.parquet as pq
    from lwmkit.packing import ShardDataSource

    src = ShardDataSource(str(out / "documents"))
    docs = {}
    for row in pq.read_table(out / "documents" / "documents.parquet").to_pylist():
        rec = src[row["index"]]
        assert rec["doc_id"] == row["doc_id"]
        docs[(row["source_file"], row["source_line"])] = {**rec, "meta": json.loads(row["meta"])}
    return docs


def assert_same_outputs(out: Path, other: Path, subs: Sequence[str]) -> None:
    """The shards of each dataset in `subs`, and the failures, are the same bytes in both outputs."""
    for sub in subs:
        names = sorted(p.name for p in (out / sub).glob("*.array_record-*"))
        assert names and names == sorted(p.name for p in (other / sub).glob("*.array_record-*"))
        _, mismatch, errors = filecmp.cmpfiles(out / sub, other / sub, names, shallow=False)
        assert mismatch == [] and errors == []
    assert (out / "failures.jsonl").read_text() == (other / "failures.jsonl").read_text()


def build_job(base: Path, server, make_corpus, options, run, tokenizer: str) -> tuple:
    """(corpus, options, manifest, output) of `run` over the corpus `make_corpus` writes in base/in
    (its URLs on `server`), with `options(corpus, base / "out", tokenizer)`."""
    corpus = make_corpus(base / "in", server)
    opts = options(corpus, base / "out", tokenizer)
    return corpus, opts, run(opts), base / "out"


def checked_failures(out: Path, input_failures: Sequence[tuple]) -> tuple[list[dict], list[tuple]]:
    """The failures rows of a job output, and the (stage, file, line, reason) of those of its
    packing stages (`pack-*`), sorted; checks that every row has a detail and that the rows of the
    other stages are `input_failures`."""
    rows = read_failures(out)
    assert all(r["detail"] for r in rows)
    where = [((r["stage"], r["file"], r["line"], r["reason"]), r["stage"].startswith("pack-")) for r in rows]
    assert sorted(w for w, packing in where if not packing) == sorted(input_failures)
    return rows, sorted(w for w, packing in where if packing)


def work_copy(folder: str | os.PathLike, tmp_path: Path, monkeypatch) -> str:
    """A copy of `folder` (modification times kept) made the current directory: a test that reruns
    a job over it leaves the module's built outputs as they were."""
    import shutil

    shutil.copytree(folder, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    return str(tmp_path / "w")


def inodes(folder: str) -> dict[str, int]:
    """Every file under `folder` by its inode: equal before and after means nothing was rewritten."""
    return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_ino for d, _, names in os.walk(folder) for n in names}


def run_cli_child(argv: Sequence[str], modules: Sequence[str] = ("apache_beam",)):
    """Runs `lwm-pack ARGV` in a fresh interpreter that prints, as its last line, the first three
    loaded modules of the top-level packages `modules`; returns (the result, its CPU-seconds)."""
    import resource
    import subprocess
    import sys

    code = ("import sys\nfrom lwmkit.pipelines.cli import main\nrc = main(sys.argv[1:])\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {tuple(modules)!r})[:3])\nsys.exit(rc)\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-P", "-c", code, *argv], capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def touch_later(path: str) -> None:
    """Moves `path`'s modification time one second on (its contents unchanged)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
