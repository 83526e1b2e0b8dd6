"""`lwm-pack demo`: a small corpus built and read back from a built-in sample (no downloads)."""

from __future__ import annotations


def add_parser(sub) -> None:
    """Adds the command to the subparsers `sub`."""
    demo = sub.add_parser("demo", help="build and read back a small corpus from a built-in sample (no downloads)")
    demo.add_argument("output", help="directory for the sample, tokenizer and shards")
    demo.add_argument("--tokenizer", help="a SentencePiece .model to use instead of training one")
    demo.add_argument("--books", type=int, default=24, help="number of sample books (default 24)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--videos", type=int, default=2, help="generated clips for the video part (0: none; default 2)")
    demo.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args, beam_args: list[str]) -> None:
    """Runs the demo."""
    from lwmkit.pipelines.tools.demo import run_demo

    run_demo(args.output, tokenizer=args.tokenizer, books=args.books, seed=args.seed, progress=not args.quiet,
             videos=args.videos)
