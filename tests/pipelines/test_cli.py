"""`lwm-pack`: each subcommand through `cli.main`, plus the installed console script once."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil
import subprocess
import sys

import lwmkit.pipelines.tools.demo as demo_mod
import pytest
from lwmkit.packing import verify_directory
from lwmkit.pipelines.books.job import STAGES as BOOK_STAGES
from lwmkit.pipelines.cli import main
from lwmkit.tokenizers import SentencePieceTokenizer

from .helpers import write_jsonl, write_small_raw_books

SUBCOMMANDS = ("demo", "books", "images", "videos", "qa", "pack", "report", "inspect", "export", "train-tokenizer")
# `demo_mod` is imported here, at collection, on purpose: `run_demo(out=sys.stdout)` binds the stdout
# of import time (see test_demo_prints_to_the_current_stdout), and pytest's session-wide capture
# stays open, whereas a per-test `capsys` stream would be closed by the next demo test.


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    return write_small_raw_books(tmp_path_factory.mktemp("cli-raw"))


@pytest.fixture(scope="module")
def books_out(raw, bpe_model, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("cli-books") / "out")
    rc = main(["books", "--input", os.path.join(raw, "*.jsonl.zst"), "--input", os.path.join(raw, "*.txt"),
               "--tokenizer", bpe_model, "--seq-len", "256,1_024", "--output", out, "--quiet"])
    assert rc == 0
    return out


def test_books(books_out):
    manifest_dirs = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(books_out, "*", "manifest.json")))
    assert manifest_dirs == ["documents", "packed-1024", "packed-256"]
    for d in manifest_dirs:
        assert verify_directory(os.path.join(books_out, d)) == []


def test_books_prints_a_summary_and_passes_beam_options_to_beam(raw, bpe_model, tmp_path, capsys):
    out = str(tmp_path / "out")
    rc = main(["books", "--input", os.path.join(raw, "*.jsonl.zst") + "," + os.path.join(raw, "*.txt"),
               "--tokenizer", bpe_model, "--seq-len", "512", "--output", out, "--quiet", "--job_name=cli-test"])
    assert rc == 0
    assert capsys.readouterr().out.strip() == (
        f"5 documents -> documents: 5 records, packed-512: {_records(out, 'packed-512')} records; 1 failures"
    )


def test_an_unquoted_glob_is_an_error_naming_the_stray_files(raw, bpe_model, tmp_path, capsys):
    import glob

    files = sorted(glob.glob(os.path.join(raw, "*")))  # what the shell makes of an unquoted glob
    assert len(files) > 1
    with pytest.raises(SystemExit) as e:
        main(["books", "--input", *files, "--tokenizer", bpe_model, "--output", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert files[1] in err and "quote it" in err and "neither lwm-pack nor Beam options" in err
    assert not os.path.exists(tmp_path / "o")


def test_an_option_neither_lwm_pack_nor_beam_knows_is_an_error(raw, bpe_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["books", "--input", os.path.join(raw, "*.txt"), "--tokenizer", bpe_model, "--output",
              str(tmp_path / "o"), "--project", "p", "--foo=bar"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--foo=bar" in err and "--project" not in err.split("options):", 1)[1]


def _records(out, name) -> int:
    import json

    with open(os.path.join(out, name, "manifest.json")) as f:
        return json.load(f)["records"]


def test_books_retry_failures_and_discard_work(raw, bpe_model, tmp_path, capsys):
    out = str(tmp_path / "out")
    args = ["books", "--input", os.path.join(raw, "*.jsonl.zst"), "--tokenizer", bpe_model, "--seq-len", "512",
            "--output", out, "--quiet"]
    assert main(args) == 0
    assert os.path.isdir(os.path.join(out, ".work", "units"))  # kept by default, for retries
    capsys.readouterr()
    # The one failure ({bad, a JSON error) fails again: the summary says so.
    assert main([*args, "--retry-failures", "--discard-work"]) == 0
    assert capsys.readouterr().out.strip().endswith("retried 1 failed rows: 0 recovered, 1 still failing")
    assert not os.path.exists(os.path.join(out, ".work"))


def test_books_progress_goes_to_stderr(raw, bpe_model, tmp_path, capsys):
    rc = main(["books", "--input", os.path.join(raw, "*.txt"), "--tokenizer", bpe_model, "--seq-len", "128",
               "--output", str(tmp_path / "out")])
    assert rc == 0
    captured = capsys.readouterr()
    assert "[lwm-pack]" in captured.err and "finished in" in captured.err
    assert "[lwm-pack]" not in captured.out
    # after the run: one line per stage, in the job's stage order, with the manifest's counts
    with open(tmp_path / "out" / "manifest.json", encoding="utf-8") as f:
        stages = json.load(f)["stages"]
    final = captured.err[captured.err.index("finished in"):].splitlines()[1:]
    assert set(stages) == set(BOOK_STAGES)
    want = [f"[lwm-pack] {s}: {stages[s]['seen']} in, {stages[s]['kept']} out, {stages[s]['dropped']} dropped"
            for s in BOOK_STAGES]
    assert final[: len(want)] == want and len(want) >= 3
    assert want[0].startswith("[lwm-pack] read: ") and want[-1].startswith("[lwm-pack] dedup: ")


def test_books_bad_glob_is_an_error(bpe_model, tmp_path, capsys):
    pattern = str(tmp_path / "nowhere" / "*.jsonl.zst")
    rc = main(["books", "--input", pattern, "--tokenizer", bpe_model, "--output", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("lwm-pack books: error:") and pattern in err


def test_books_with_no_valid_documents_is_an_error(bpe_model, tmp_path, capsys):
    write_jsonl(tmp_path / "bad.jsonl", [b"{not json", b'{"text": null}'])
    rc = main(["books", "--input", str(tmp_path / "bad.jsonl"), "--tokenizer", bpe_model, "--output",
               str(tmp_path / "out"), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "lwm-pack books: error: no valid documents" in err
    assert "read:invalid_json x1" in err and "read:missing_text x1" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seq-len", "1"], "seq_lens: 1 is outside"),
        (["--min-chars", "-1"], "min_chars"),
    ],
)
def test_books_bad_option_values(raw, bpe_model, tmp_path, capsys, args, message):
    base = ["books", "--input", os.path.join(raw, "*.txt"), "--tokenizer", bpe_model, "--output", str(tmp_path / "o"),
            "--quiet"]
    rc = main(base + args)
    if message is None:
        assert rc == 0
        return
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("lwm-pack books: error:") and message in err


def test_books_bad_tokenizer_is_an_error(raw, tmp_path, capsys):
    bogus = tmp_path / "bogus.model"
    bogus.write_text("not a model")
    rc = main(["books", "--input", os.path.join(raw, "*.txt"), "--tokenizer", str(bogus), "--output", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "error:" in err and str(bogus) in err


def test_seq_len_must_be_integers(capsys):
    with pytest.raises(SystemExit) as e:
        main(["books", "--input", "x.jsonl", "--tokenizer", "t.model", "--output", "o", "--seq-len", "32k"])
    assert e.value.code == 2
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_train_tokenizer(raw, tmp_path, capsys):
    path = tmp_path / "tok.model"
    rc = main(["train-tokenizer", "--input", os.path.join(raw, "*"), "--vocab-size", "400", "--output", str(path)])
    assert rc == 0
    assert f"wrote {path} (400 pieces, trained on 2 files)" in capsys.readouterr().out
    tok = SentencePieceTokenizer.from_file(str(path))
    assert tok.vocab_size == 400 and (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    text = "Ada opened the quiet letter near the harbour. 漢字 😀"
    assert tok.decode(tok.encode(text)) == text


def test_train_tokenizer_errors(raw, tmp_path, capsys):
    rc = main(["train-tokenizer", "--input", os.path.join(raw, "*"), "--vocab-size", "100", "--output", str(tmp_path / "t")])
    assert rc == 1
    assert "lwm-pack train-tokenizer: error: vocab_size must be >= 300" in capsys.readouterr().err
    rc = main(["train-tokenizer", "--input", str(tmp_path / "none*.jsonl"), "--output", str(tmp_path / "t")])
    assert rc == 1
    assert "matches no file" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_inspect_shows_segments(books_out, capsys):
    assert main(["inspect", books_out, "--max-tokens", "20"]) == 0
    out = capsys.readouterr().out
    for name in ("documents: OK", "packed-256: OK", "packed-1024: OK"):
        assert name in out
    assert out.count("failures:") == 1  # the job's failures, not once per dataset
    assert "\nfailures: 1 dropped records (read:invalid_json x1)\n" in out
    assert "record 0 (seq_len " in out
    assert "── segment 1: doc " in out
    assert "<s>" in out  # the tokenizer recorded in the manifest renders the text


def test_inspect_a_dataset_directory_and_record(books_out, capsys):
    assert main(["inspect", os.path.join(books_out, "documents"), "--record", "1", "--no-checksums"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("documents: OK")
    assert "record 1: doc " in out


def test_inspect_shows_every_segment_of_a_packed_record(books_out, capsys):
    from lwmkit.packing import ShardDataSource

    d = os.path.join(books_out, "packed-1024")
    src = ShardDataSource(d)
    index = max(range(len(src)), key=lambda i: len(src[i]["segment_lengths"]))
    k = len(src[index]["segment_lengths"])
    assert main(["inspect", d, "--record", str(index)]) == 0
    out = capsys.readouterr().out
    assert out.count("── segment") == k
    assert f"── segment {k}: doc {int(src[index]['segment_doc_ids'][-1])}" in out


def _flip_byte(shard: str, offset: int) -> None:
    with open(shard, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


@pytest.mark.parametrize("dataset", ["packed-256", "documents"])
def test_inspect_tampered_shard_fails(books_out, tmp_path, capsys, dataset):
    out = tmp_path / "out"
    shutil.copytree(books_out, out)
    shard = sorted(glob.glob(str(out / dataset / "*.array_record-*")))[0]
    assert os.path.getsize(shard) > 30_000
    _flip_byte(shard, 30_000)  # inside record data of the first 64 KiB block, not a block header
    rc = main(["inspect", str(out)])
    assert rc == 1
    captured = capsys.readouterr()
    assert f"{dataset}: PROBLEMS" in captured.out
    assert f"problem: {shard}: SHA-256 differs from the manifest" in captured.out
    assert captured.err.startswith("lwm-pack inspect: error:") and "1 problems found" in captured.err
    # Without re-hashing, the same directory passes: the record count is intact.
    assert main(["inspect", str(out), "--no-checksums"]) == 0


def test_inspect_damaged_block_header_is_reported_not_raised(books_out, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(books_out, out)
    shard = sorted(glob.glob(str(out / "documents" / "*.array_record-*")))[0]
    _flip_byte(shard, (os.path.getsize(shard) - 1) // 65536 * 65536)  # header of the block holding the footer
    rc = main(["inspect", str(out)])
    assert rc == 1
    captured = capsys.readouterr()
    assert shard in captured.out and captured.err.startswith("lwm-pack inspect: error:")


def test_inspect_not_an_output_directory(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lwm-pack inspect: error:") and "no manifest" in err


def test_demo(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", str(out), "--books", "6", "--quiet"]) == 0
    assert (out / "tokenizer.model").is_file()
    assert sorted(os.listdir(out / "raw")) == ["books-00000.jsonl.zst", "notes.txt"]
    for d in ("documents", "packed-2048", "packed-8192"):
        assert verify_directory(str(out / "shards" / d)) == []


def test_demo_output(tmp_path):
    # The demo's report, through its `out` stream.
    buf = io.StringIO()
    manifest = demo_mod.run_demo(str(tmp_path / "demo"), books=6, out=buf, progress=False, videos=0)
    text = buf.getvalue()
    assert manifest["documents"] == 7 and manifest["failures"]["by_reason"] == {"read:invalid_json": 1}
    assert "sample corpus:" in text
    assert "trained a 1000-piece BPE tokenizer" in text
    assert "packed-2048: OK" in text and "packed-8192: OK" in text
    assert "── segment 1:" in text
    assert "Grain read-back from" in text and "batch of 4 x 2048 tokens" in text
    assert "failures (with reasons):" in text


def test_demo_prints_to_the_current_stdout(tmp_path, bpe_model):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["demo", str(tmp_path / "demo"), "--books", "6", "--quiet", "--tokenizer", bpe_model, "--videos", "0"])
    assert rc == 0
    assert "Grain read-back" in buf.getvalue()


def test_demo_with_a_given_tokenizer(tmp_path, bpe_model):
    buf = io.StringIO()
    out = tmp_path / "demo"
    demo_mod.run_demo(str(out), tokenizer=bpe_model, books=6, out=buf, progress=False, videos=0)
    assert "trained a" not in buf.getvalue() and not (out / "tokenizer.model").exists()
    assert "Grain read-back" in buf.getvalue()


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: lwm-pack {command}" in capsys.readouterr().out


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes


@pytest.mark.parametrize("command", ["books", "images", "videos", "qa", "video-qa", "pack"])
def test_job_help_shows_defaults(command, capsys):
    text = _help(command, capsys)
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "--runner RUNNER a Beam runner: DirectRunner, DaskRunner, PortableRunner, DataflowRunner, ... " \
           "(default: DirectRunner)" in text
    assert "--direct-running-mode {in_memory,multi_processing} (default: in_memory)" in text


def test_books_help_shows_every_default(capsys):
    text = _help("books", capsys)
    for shown in ("--seq-len SEQ_LEN packed lengths, e.g. 32768,131072 (default: 32768)",
                  "--text-key TEXT_KEY JSON key / parquet column of the text (default: text)",
                  "--min-chars MIN_CHARS drop documents with fewer characters (default: 1)",
                  "(default: no limit)", "(default: 16777216)", "(default: by_kind)", "(default: as_is)"):
        assert shown in text


def test_top_level_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in SUBCOMMANDS)


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "usage: lwm-pack" in capsys.readouterr().err


def test_unknown_args_are_refused_outside_books(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(tmp_path), "--foo=bar"])
    assert e.value.code == 2
    assert "unrecognized arguments: --foo=bar" in capsys.readouterr().err


def _console_script() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "lwm-pack")
    if not os.path.exists(path):
        pytest.skip(f"console script not installed next to {sys.executable}")
    return path


def test_console_script_help():
    result = subprocess.run([_console_script(), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lwm-pack")
    assert all(c in result.stdout for c in SUBCOMMANDS)


def test_cli_help_does_not_import_beam():
    code = (
        "import sys\n"
        "from lwmkit.pipelines.cli import main\n"
        "try:\n"
        "    main(['books', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('apache_beam'))[:3])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _cpu_seconds_of(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Runs `lwm-pack ARGS` in a child process; its user + system CPU seconds and the result."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    code = "import sys; from lwmkit.pipelines.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-P", "-c", code, *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


@pytest.mark.parametrize(("inputs", "tokenizer", "message"), [
    ("{tmp}/nowhere/*.txt", "{tok}", "--input '{tmp}/nowhere/*.txt' matches no file"),
    ("{tmp}/a.txt", "{tmp}/missing.model", "--tokenizer {tmp}/missing.model: no such file"),
])
def test_a_missing_input_is_reported_before_beam_loads(bpe_model, tmp_path, inputs, tokenizer, message):
    (tmp_path / "a.txt").write_text("a book")
    fill = {"tmp": str(tmp_path), "tok": bpe_model}
    cpu, proc = _cpu_seconds_of(["books", "--input", inputs.format(**fill), "--tokenizer", tokenizer.format(**fill),
                                 "--output", str(tmp_path / "out")])  # fmt: skip
    assert proc.returncode == 1 and f"lwm-pack books: error: {message.format(**fill)}" in proc.stderr
    assert cpu < 1.0, f"{cpu:.2f} CPU-s to report a missing input (Beam loaded?)"
    assert not (tmp_path / "out").exists()
