"""The quick no-op answers of `lwm-pack images`, `videos`, `video-qa`, `qa` and `pack` (each job's
options.py, as books/options.py for `books`, see test_books_options.py): a rerun over a complete
local output is answered before Beam (or JAX) loads, with what the full path would say, and a
changed input or option falls through to the job."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
from lwmkit.pipelines.cli import main
from lwmkit.pipelines.tools.sample_videos import write_cut_video

from . import helpers
from .image_inputs import rgb, write_tar
from .video_inputs import write_clip

TINY = ["--vqgan-preset", "tiny", "--batch-size", "4"]
# job -> its command (relative paths: each test reruns over its own copy of the folder), its
# options module and quick check, its job module and run function, and the input a test touches.
JOBS = {
    "images": (["images", "--input", "raw/pairs.tar", *TINY, "--seq-len", "600", "--output", "out/images"],
               "images", "complete_images", "run_images", "raw/pairs.tar"),
    "videos": (["videos", "--input", "raw/videos/videos.jsonl", *TINY, "--num-frames", "2", "--seq-len", "1000",
                "--output", "out/videos"], "videos", "complete_videos", "run_videos", "raw/videos/videos.jsonl"),
    "video-qa": (["video-qa", "--input", "raw/long/*.mp4", *TINY, "--offline", "--clips", "stride", "--stride", "4",
                  "--min-clip", "1", "--max-frames", "2", "--seq-len", "4096", "--output", "out/video-qa"],
                 "video_qa", "complete_video_qa", "run_video_qa", "raw/long/a.mp4"),
    "qa": (["qa", "--input", "raw/qa.jsonl", "--preset", "tiny", "--generator", "extractive", "--output", "out/qa"],
           "qa", "complete_qa", "run_qa", "raw/qa.jsonl"),
    "pack": (["pack", "--documents", "out/books/documents", "--schedule", "256,1024", "--output", "out/stages"],
             "pack", "complete_stages", "run_stages", None),
}


def _command(job: str, bpe_model: str, *extra: str) -> list[str]:
    argv = JOBS[job][0]
    return [*argv, *(["--tokenizer", bpe_model] if job != "pack" else []), *extra]


@pytest.fixture(scope="module")
def built(bpe_model, tmp_path_factory) -> str:
    """A folder with raw/ inputs and out/<job>, the complete output of each job's command."""
    base = tmp_path_factory.mktemp("quick")
    raw = base / "raw"
    (raw / "videos").mkdir(parents=True)
    (raw / "long").mkdir()
    write_tar(raw / "pairs.tar", [("0001.png", rgb(seed=1)), ("0001.txt", b"a pattern"),
                                  ("0002.png", rgb(seed=2)), ("0002.txt", b"another pattern")])
    write_clip(raw / "videos" / "a.mp4", n=6)
    (raw / "videos" / "videos.jsonl").write_text(json.dumps({"path": "a.mp4", "caption": "A clip"}) + "\n")
    write_cut_video(str(raw / "long" / "a.mp4"), frames=80, cuts=(30,), fps=10)
    helpers.write_jsonl(raw / "qa.jsonl", [helpers.record(helpers.book(400 + i, 40)) for i in range(2)])
    helpers.write_jsonl_zst(raw / "books.jsonl.zst", [helpers.record(helpers.book(i, 8 + 4 * i)) for i in range(3)])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        assert main(["books", "--input", "raw/books.jsonl.zst", "--tokenizer", bpe_model, "--seq-len", "512",
                     "--output", "out/books", "--quiet"]) == 0  # what `pack` packs again
        for job in JOBS:
            assert main([*_command(job, bpe_model), "--quiet"]) == 0, job
    return str(base)


@pytest.fixture
def here(built, tmp_path, monkeypatch) -> str:
    return helpers.work_copy(built, tmp_path, monkeypatch)


@pytest.mark.parametrize("job", list(JOBS))
def test_a_no_op_rerun_imports_neither_beam_nor_jax(here, bpe_model, job):
    proc, cpu = helpers.run_cli_child(_command(job, bpe_model), ("apache_beam", "jax"))
    assert proc.returncode == 0, proc.stderr
    assert "is already complete for these inputs and options" in proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout
    assert cpu < 1.5, f"{cpu:.2f} CPU-s for a no-op rerun (Beam or JAX loaded?)"


@pytest.mark.parametrize("job", list(JOBS))
def test_the_quick_answer_is_the_full_paths_answer(here, bpe_model, job, monkeypatch, capsys):
    _, module, complete, _, _ = JOBS[job]
    options_lib = importlib.import_module(f"lwmkit.pipelines.{module}.options")
    before = helpers.inodes("out")
    with monkeypatch.context() as m:
        m.setattr(options_lib, complete, lambda options: None)  # the job's launch decides
        assert main(_command(job, bpe_model)) == 0
    full = capsys.readouterr()
    answers = []
    real = getattr(options_lib, complete)
    monkeypatch.setattr(options_lib, complete, lambda options: answers.append(real(options)) or answers[-1])
    assert main(_command(job, bpe_model)) == 0
    quick = capsys.readouterr()
    assert answers and answers[0] is not None
    assert (quick.out, quick.err) == (full.out, full.err)
    assert "is already complete for these inputs and options" in quick.err
    assert helpers.inodes("out") == before  # nothing rewritten


@pytest.mark.parametrize("job, change", [(job, change) for job in JOBS for change in ("input", "option")
                                         if JOBS[job][4] or change == "option"])
def test_a_change_falls_through_to_the_job(here, bpe_model, job, change, monkeypatch):
    argv, module, complete, run, touched = JOBS[job]
    extra = ["--shard-tokens", "12345"] if change == "option" else []
    if change == "input":
        helpers.touch_later(touched)
    options_lib = importlib.import_module(f"lwmkit.pipelines.{module}.options")
    job_lib = importlib.import_module(f"lwmkit.pipelines.{module}.job")
    answers, runs = [], []
    real = getattr(options_lib, complete)
    monkeypatch.setattr(options_lib, complete, lambda options: answers.append(real(options)) or answers[-1])
    output = argv[argv.index("--output") + 1]

    def run_instead(options):  # what the job would have rebuilt; its last manifest serves the summary line
        runs.append(options)
        with open(os.path.join(output, "manifest.json"), encoding="utf-8") as f:
            return json.load(f)

    monkeypatch.setattr(job_lib, run, run_instead)
    assert main([*_command(job, bpe_model), *extra, "--quiet"]) == 0
    assert answers == [None] and len(runs) == 1


@pytest.mark.parametrize("job", ["books", "images", "videos", "video-qa", "qa"])
def test_a_dry_run_in_a_fresh_process_finds_its_job(tmp_path, bpe_model, job):
    # The job module registers its graph when imported; the command imports it for a dry run.
    code = "import sys\nfrom lwmkit.pipelines.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a"}\n')
    argv = [job, "--input", str(source), "--tokenizer", bpe_model, "--output", str(tmp_path / "o"), "--dry_run=True"]
    proc = subprocess.run([sys.executable, "-P", "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "only --runner DataflowRunner builds a job" in proc.stderr, proc.stderr


@pytest.mark.parametrize("job", list(JOBS))
def test_a_missing_input_is_refused_before_beam_loads(tmp_path, bpe_model, job):
    argv = _command(job, bpe_model)
    flag = "--documents" if job == "pack" else "--input"
    argv[argv.index(flag) + 1] = str(tmp_path / "nowhere" / ("documents" if job == "pack" else "*.jsonl"))
    proc, _ = helpers.run_cli_child(argv)
    assert proc.returncode == 1 and f"lwm-pack {job}: error: " in proc.stderr, proc.stderr
    assert "matches no file" in proc.stderr or job == "pack"
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout
