"""`lwm-pack books`: Books3-style text -> document and packed token shards."""

from __future__ import annotations

from lwmkit.pipelines.cli import common, job_command


def add_parser(sub) -> None:
    """Adds the command to the subparsers `sub`."""
    books = job_command.add_job_parser(
        sub, "books", "Books3-style text -> document and packed token shards (Beam job)",
        "Unknown options are passed to Beam, e.g. --project, --region, --temp_location for Dataflow.")
    job_command.add_io_arguments(
        books, "file glob (.jsonl.zst, .jsonl, .txt, .parquet); repeatable", (32768,), "packed lengths, e.g. 32768,131072")
    books.add_argument("--text-key", default="text", help="JSON key / parquet column of the text")
    books.add_argument("--min-chars", type=int, default=1, help="drop documents with fewer characters")
    books.add_argument("--max-chars", type=int, default=None,
                       help="drop documents with more characters (default: no limit)")
    common.work_arguments(books)
    books.add_argument("--work-unit-mb", type=float, default=64.0,
                       help="size of a work-store unit in MiB (memory per worker grows with it; default 64)")
    common.near_dedup_arguments(books, "estimated Jaccard similarity of word 5-grams at or above which two books are "
                                "near-copies", 0.8)
    common.run_arguments(books)
    common.pack_arguments(books)


def run(args, beam_args: list[str]) -> None:
    """Runs the books job (or its Dataflow dry run) and prints a summary line.

    A rerun over a complete local output is answered before Beam loads (`books.options.complete_books`).
    """
    common.check_local_inputs(common.split_inputs(args.input), args.tokenizer)  # before Beam loads
    from lwmkit.pipelines.books.options import BooksOptions, complete_books

    options = BooksOptions(
        **job_command.io_option_values(args),
        **text_option_values(args),
        pack=common.pack_options(args),
        retry_failures=args.retry_failures,
        keep_work=not args.discard_work,
        unit_bytes=max(1, int(args.work_unit_mb * (1 << 20))),
        near_dedup=args.near_dedup,
        near_threshold=args.near_threshold,
        **common.run_options(args, beam_args),
    )
    if job_command.dry_run_instead(options, "books.job"):
        return
    if (manifest := complete_books(options)) is None:
        from lwmkit.pipelines.books.job import run_books

        manifest = run_books(options)
    job_command.print_datasets(manifest, "documents")


def text_option_values(args) -> dict:
    """The job options' fields of --text-key, --min-chars and --max-chars (books, qa)."""
    return {"text_key": args.text_key, "min_chars": args.min_chars, "max_chars": args.max_chars}
