"""`lwm-needle`: build needle cases, run them against a model, and report scores and heatmaps.

    lwm-needle build --haystack books/ --haystack notes.txt --tokenizer tokenizer.model \\
        --task lwm_single --grid quick --out cases.jsonl [--records cases_ds/] [--no-prompt]
    lwm-needle build-video --haystack generated --tokenizer tokenizer.model --needle-image cat.png \\
        --vqgan vqgan.safetensors --question "What animal appears in the video?" \\
        --option cat --option dog --option horse --answer cat --lengths 256,1024 --out video.jsonl
    lwm-needle run --cases cases.jsonl --results results.jsonl --backend openai \\
        --base-url http://127.0.0.1:8000/v1 --model lwm --concurrency 8 --heatmap heatmap.png
    lwm-needle run --cases cases.jsonl --results results.jsonl --backend lwm_model --preset 7b \\
        --checkpoint params.msgpack --tokenizer tokenizer.model
    lwm-needle report --results results.jsonl --heatmap heatmap.png --summary-plot tasks.png

Every command is a thin layer over the library (`build_cases`, `build_video_case`, `evaluate`,
`heatmap`); each prints what it did and returns 0, or prints the error and returns 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lwmkit.eval.input_files import check_input_files
from lwmkit.eval.tasks import GRID_PRESETS, TASK_PRESETS, Grid, grid_preset, task_preset
from lwmkit.packing.compile_cache import add_cache_argument, enable_compile_cache


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x.strip())


def _grid(args: argparse.Namespace, default: str) -> Grid:
    base = grid_preset(args.grid or default)
    return Grid(args.lengths or base.lengths, args.depths or base.depths)


@contextlib.contextmanager
def _progress_bar(description: str, total: int, enabled: bool) -> Iterator[Callable[[Any], None]]:
    """Yields `advance(_)`: a rich bar (count, time left) on stderr when it is a terminal and
    `enabled`, cleared when done; otherwise nothing is drawn."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    if not enabled or not console.is_terminal:
        yield lambda _: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, redirect_stdout=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda _: bar.advance(task)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lwm-needle", description="Needle-in-a-haystack cases, evaluation and heatmaps.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build text cases of exact token lengths")
    b.add_argument("--haystack", action="append", required=True, help=".txt, .jsonl(.zst) or a document dataset dir")
    b.add_argument("--tokenizer", required=True, help="the target model's SentencePiece .model")
    b.add_argument("--task", default="lwm_single", choices=list(TASK_PRESETS))
    b.add_argument("--needles", type=int, help="needles inserted (override the task's)")
    b.add_argument("--queries", type=int, help="needles asked (override the task's)")
    b.add_argument("--answer-tokens", type=int, help="tokens reserved for the answer")
    b.add_argument("--template", help="chat template (lwm, lwm_multi, ruler, plain)")
    b.add_argument("--grid", choices=list(GRID_PRESETS), help="length x depth preset (default quick)")
    b.add_argument("--lengths", type=_ints, help="comma-separated context lengths (tokens)")
    b.add_argument("--depths", type=_floats, help="comma-separated depths (percent)")
    b.add_argument("--rounds", type=int, default=1, help="cases per grid cell")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--haystack-seed", type=int, default=0, help="shuffles the haystack's documents")
    b.add_argument("--text-field", default="text", help="JSONL key of a document's text")
    b.add_argument("--out", required=True, help="cases JSONL")
    b.add_argument("--records", help="also write the cases as lwmkit document records here")
    b.add_argument("--no-prompt", action="store_true", help="store recipes only (rebuilt when run)")
    b.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    b.add_argument("--allow-repeat", action="store_true",
                   help="read a haystack smaller than a context more than once (each case records its "
                        "repeated share); without it such a length is an error")  # fmt: skip

    v = sub.add_parser("build-video", help="build video cases (a needle image in a long video)")
    v.add_argument("--haystack", required=True, help="'generated' or a document dataset dir with video")
    v.add_argument("--haystack-frames", type=int, default=4096, help="frames of a generated haystack")
    v.add_argument("--haystack-codes", type=int, default=8192, help="code range of a generated haystack")
    v.add_argument("--tokenizer", required=True)
    v.add_argument("--needle-image", required=True, help="the image to hide")
    v.add_argument("--needle-frames", type=int, default=1, help="frames the needle image lasts")
    v.add_argument("--vqgan", help="VQGAN weights; default: the VQGAN the dataset haystack's manifest records, "
                                   "or for a generated haystack a RANDOM VQGAN (tests only, with a warning)")  # fmt: skip
    v.add_argument("--vqgan-preset", choices=["lwm", "tiny"],
                   help="network shape of --vqgan weights (default lwm) or of the random VQGAN (default tiny)")  # fmt: skip
    v.add_argument("--vqgan-seed", type=int, default=0, help="seed of the random VQGAN without --vqgan")
    v.add_argument("--allow-repeat", action="store_true",
                   help="a haystack shorter than a length is read again from its start (each case records "
                        "its repeated share); without it such a length is an error")  # fmt: skip
    v.add_argument("--question", required=True)
    v.add_argument("--option", action="append", default=[], help="a multiple-choice option (repeat)")
    v.add_argument("--answer", required=True, help="the right option, or the short answer")
    v.add_argument("--name", default="video_needle", help="task name in results")
    v.add_argument("--grid", choices=list(GRID_PRESETS), help="preset whose depths to use")
    v.add_argument("--lengths", type=_ints, required=True, help="comma-separated haystack lengths in frames")
    v.add_argument("--depths", type=_floats, help="comma-separated depths (percent)")
    v.add_argument("--rounds", type=int, default=1)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", required=True)
    v.add_argument("--records", help="also write the cases as lwmkit document records here")
    add_cache_argument(v)

    r = sub.add_parser("run", help="answer and score cases; resumes an interrupted run")
    r.add_argument("--cases", required=True)
    r.add_argument("--results", required=True, help="results JSONL (appended to; resumed)")
    r.add_argument("--backend", required=True, choices=["openai", "lwm_model"])
    r.add_argument("--base-url", help="openai: API root, e.g. http://127.0.0.1:8000/v1")
    r.add_argument("--model", help="openai: model name")
    r.add_argument("--mode", default="completions", choices=["completions", "chat"])
    r.add_argument("--api-key-env", help="openai: name of the environment variable holding the API key")
    r.add_argument("--preset", default="7b", help="lwm_model: size preset")
    r.add_argument("--checkpoint", help="lwm_model: parameters (default: random, for tests)")
    r.add_argument("--checkpoint-format", default="lwm", choices=["lwm", "orbax", "hf"])
    r.add_argument("--tokenizer", help="lwm_model: the text tokenizer; also decodes document haystacks")
    r.add_argument("--concurrency", type=int, default=4)
    r.add_argument("--no-resume", action="store_true", help="start the results file afresh")
    r.add_argument("--max-new-tokens", type=int, help="default: each case's answer_tokens")
    add_cache_argument(r)
    _report_args(r)

    rep = sub.add_parser("report", help="print the score table and draw plots from results")
    rep.add_argument("--results", required=True)
    _report_args(rep)
    return p


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heatmap", help="heatmap PNG (one task; with several, one file per task: <stem>-<task>.png)")
    p.add_argument("--summary-plot", help="PNG of score by length, one line per task")
    p.add_argument("--summary-json", help="write the per-task summary as JSON")


def _tokenizer(path: str | None):
    from lwmkit.tokenizers.text import SentencePieceTokenizer

    return SentencePieceTokenizer.from_file(path) if path else None


def _build(args: argparse.Namespace) -> None:
    from lwmkit.eval.cases import build_cases, write_cases
    from lwmkit.eval.haystack import Haystack, HaystackSpec

    overrides: dict[str, Any] = {}
    for name in ("needles", "queries", "answer_tokens", "template"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    task = task_preset(args.task, **overrides)
    tok = _tokenizer(args.tokenizer)
    spec = HaystackSpec(tuple(args.haystack), seed=args.haystack_seed, text_field=args.text_field)
    hay = Haystack.load(spec, tok)
    t0 = time.perf_counter()
    grid = _grid(args, "quick")
    total = len(grid.lengths) * len(grid.depths) * args.rounds
    with _progress_bar("building cases", total, not args.quiet) as advance:
        cases = list(build_cases(hay, tok, task, grid, rounds=args.rounds, seed=args.seed, progress=advance,
                                 include_prompt=not args.no_prompt, allow_repeat=args.allow_repeat))  # fmt: skip
    n = write_cases(cases, args.out)
    calls = sum(c["build"]["tokenizer_calls"] for c in cases)
    print(f"wrote {n} {task.name} cases to {args.out} in {time.perf_counter() - t0:.1f}s "
          f"({calls} tokenizer calls; haystack {len(hay.units)} units from {hay.documents} documents)")  # fmt: skip
    _repeat_summary([(c["build"]["repeat_tokens"], c["haystack_tokens"]) for c in cases], "tokens")
    if args.records:
        _records(cases, args.records, tok)


def _repeat_summary(repeats: list[tuple[int, int]], unit: str) -> None:
    """Prints how much of the haystack the cases repeated (only with --allow-repeat can they)."""
    hit = [(r, t) for r, t in repeats if r]
    if hit:
        share = sum(r for r, _ in hit) / sum(t for _, t in repeats)
        print(f"WARNING: {len(hit)} of {len(repeats)} cases repeat haystack {unit} (--allow-repeat): "
              f"{sum(r for r, _ in hit)} repeated {unit}, {share:.1%} of all haystack {unit}; "
              "see each case's repeat_share", file=sys.stderr)  # fmt: skip


def _records(cases: list[dict[str, Any]], directory: str, tok: Any) -> None:
    from lwmkit.eval.case_records import write_case_records

    m = write_case_records(cases, directory, tok)
    print(f"wrote {m['records']} records ({m['tokens']['total']} tokens) to {directory}")


def _build_video(args: argparse.Namespace) -> None:
    from lwmkit.eval.cases import write_cases
    from lwmkit.eval.video_needle import (
        VideoHaystack,
        VideoHaystackSpec,
        build_video_case,
        needle_from_image,
    )

    check_input_files([("--needle-image", args.needle_image, "file"), ("--vqgan", args.vqgan, "any")])
    tok = _tokenizer(args.tokenizer)
    spec = VideoHaystackSpec(args.haystack, frames=args.haystack_frames, codes=args.haystack_codes)
    hay = VideoHaystack.load(spec)
    enable_compile_cache(args.jax_cache, export=True)  # the VQGAN encodes the needle image
    image_tok = _needle_vqgan(args, hay.encoders.get("vqgan"))
    with open(args.needle_image, "rb") as f:
        needle = needle_from_image(f.read(), image_tok, question=args.question, options=tuple(args.option),
                                   answer=args.answer, frames=args.needle_frames, name=args.name)  # fmt: skip
    depths = args.depths or grid_preset(args.grid or "tiny").depths
    cases = [
        build_video_case(hay, tok, needle, n, float(d), seed=args.seed, round_=r, allow_repeat=args.allow_repeat)
        for n in args.lengths
        for d in depths
        for r in range(args.rounds)
    ]
    print(f"wrote {write_cases(cases, args.out)} video cases to {args.out}")
    _repeat_summary([(c["repeat_frames"], c["length"]) for c in cases], "frames")
    if args.records:
        _records(cases, args.records, tok)


def _needle_vqgan(args: argparse.Namespace, recorded: dict[str, Any] | None):
    """The VQGAN that encodes the needle: --vqgan, else the one the haystack's manifest records
    (rebuilt if it was random, loaded from its recorded path otherwise), else a random one."""
    from lwmkit.tokenizers.vqgan import ImageTokenizer

    if args.vqgan:
        return ImageTokenizer.from_weights(args.vqgan, preset=args.vqgan_preset or "lwm")
    if recorded and recorded.get("random_init"):
        return ImageTokenizer.random(recorded.get("preset") or "tiny", seed=int(recorded.get("seed") or 0))
    if recorded:
        path = recorded.get("path")
        if not path or not os.path.exists(path):
            raise ValueError(
                f"--haystack {args.haystack} was encoded with VQGAN {str(recorded.get('sha256'))[:12]}… "
                f"({recorded.get('source')}), not found at its recorded path {path!r}: pass --vqgan WEIGHTS"
            )
        return ImageTokenizer.from_weights(path, preset=recorded.get("preset") or "lwm")
    return ImageTokenizer.random(args.vqgan_preset or "tiny", seed=args.vqgan_seed)


def _backend(args: argparse.Namespace):
    from lwmkit.eval.backends import LWMModelBackend, OpenAIBackend

    if args.backend == "openai":
        if not args.base_url or not args.model:
            raise ValueError("--backend openai needs --base-url and --model")
        key = None
        if args.api_key_env:
            key = os.environ.get(args.api_key_env)
            if not key:
                raise ValueError(f"environment variable {args.api_key_env} is not set")
        return OpenAIBackend(args.base_url, args.model, mode=args.mode, api_key=key)
    if not args.tokenizer:
        raise ValueError("--backend lwm_model needs --tokenizer")
    check_input_files([("--tokenizer", args.tokenizer, "file"), ("--checkpoint", args.checkpoint, "any")])
    enable_compile_cache(args.jax_cache, export=True)
    return LWMModelBackend.from_preset(args.preset, _tokenizer(args.tokenizer), checkpoint=args.checkpoint,
                                       checkpoint_format=args.checkpoint_format)  # fmt: skip


def _run(args: argparse.Namespace) -> None:
    from lwmkit.eval.cases import read_cases
    from lwmkit.eval.evaluate import evaluate

    cases = read_cases(args.cases)
    backend = _backend(args)
    t0 = time.perf_counter()
    rows = evaluate(cases, backend, args.results, concurrency=args.concurrency, resume=not args.no_resume,
                    tokenizer=_tokenizer(args.tokenizer), max_new_tokens=args.max_new_tokens)  # fmt: skip
    print(f"{len(rows)} results in {args.results} ({time.perf_counter() - t0:.1f}s)")
    _report(rows, args)


def _report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from lwmkit.eval.evaluate import format_table, summarize
    from lwmkit.eval.plots import heatmap, summary_plot

    print(format_table(rows))
    tasks = sorted({r["task"] for r in rows})
    if args.heatmap:
        stem, ext = os.path.splitext(args.heatmap)
        for t in tasks:
            path = args.heatmap if len(tasks) == 1 else f"{stem}-{t}{ext or '.png'}"
            print(f"heatmap: {heatmap(rows, path, task=t)}")
    if args.summary_plot:
        print(f"summary plot: {summary_plot(rows, args.summary_plot)}")
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as f:
            json.dump(summarize(rows), f, indent=2, sort_keys=True)


def _report_results(args: argparse.Namespace) -> None:
    from lwmkit.eval.evaluate import read_results

    rows = read_results(args.results)
    if not rows:
        raise ValueError(f"{args.results}: no results")
    _report(rows, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lwm-needle`; returns the exit status."""
    args = _parser().parse_args(argv)
    commands = {"build": _build, "build-video": _build_video, "run": _run, "report": _report_results}
    try:
        commands[args.command](args)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"lwm-needle {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
