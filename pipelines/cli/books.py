"""`lwm-pack books`: Books3-style text -> document and packed token shards."""

from __future__ import annotations

from lwmkit.pipelines.cli.common import (
    check_local_inputs,
    int_list,
    near_dedup_arguments,
    pack_arguments,
    pack_options,
    print_retry,
    run_arguments,
    run_options,
    split_inputs,
    work_arguments,
)


def add_parser(sub) -> None:
    """Adds the command to the subparsers `sub`."""
    books = sub.add_parser(
        "books",
        help="Books3-style text -> document and packed token shards (Beam job)",
        epilog="Unknown options are passed to Beam, e.g. --project, --region, --temp_location for Dataflow.",
    )
    books.add_argument("--input", action="append", required=True, help="file glob (.jsonl.zst, .jsonl, .txt, .parquet); repeatable")
    books.add_argument("--tokenizer", required=True, help="SentencePiece .model (e.g. LLaMA-2's tokenizer.model)")
    books.add_argument("--seq-len", type=int_list, default=(32768,), help="packed lengths, e.g. 32768,131072")
    books.add_argument("--output", required=True, help="output directory (local or any Beam filesystem)")
    books.add_argument("--text-key", default="text", help="JSON key / parquet column of the text")
    books.add_argument("--min-chars", type=int, default=1, help="drop documents with fewer characters")
    books.add_argument("--max-chars", type=int, default=None,
                       help="drop documents with more characters (default: no limit)")
    work_arguments(books)
    books.add_argument("--work-unit-mb", type=float, default=64.0,
                       help="size of a work-store unit in MiB (memory per worker grows with it; default 64)")
    near_dedup_arguments(books, "estimated Jaccard similarity of word 5-grams at or above which two books are "
                         "near-copies", 0.8)
    run_arguments(books)
    pack_arguments(books)


def run(args, beam_args: list[str]) -> None:
    """Runs the books job (or its Dataflow dry run) and prints a summary line.

    A rerun over a complete local output is answered before Beam loads (`books.options.complete_books`).
    """
    check_local_inputs(split_inputs(args.input), args.tokenizer)  # before Beam loads
    from lwmkit.pipelines.books.options import BooksOptions, complete_books
    from lwmkit.pipelines.engine.dataflow import dry_run_instead

    options = BooksOptions(
        inputs=split_inputs(args.input),
        output=args.output,
        tokenizer=args.tokenizer,
        seq_lens=args.seq_len,
        text_key=args.text_key,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        pack=pack_options(args),
        retry_failures=args.retry_failures,
        keep_work=not args.discard_work,
        unit_bytes=max(1, int(args.work_unit_mb * (1 << 20))),
        near_dedup=args.near_dedup,
        near_threshold=args.near_threshold,
        **run_options(args, beam_args),
    )
    if dry_run_instead(options):
        return
    if (manifest := complete_books(options)) is None:
        from lwmkit.pipelines.books.job import run_books

        manifest = run_books(options)
    summary = ", ".join(f"{k}: {v['records']} records" for k, v in manifest["datasets"].items())
    print(f"{manifest['documents']} documents -> {summary}; {manifest['failures']['total']} failures")
    print_retry(manifest)
