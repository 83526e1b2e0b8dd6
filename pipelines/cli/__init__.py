"""`lwm-pack`: the command line. Each subcommand parses its arguments and calls one library function.

    lwm-pack demo OUT
    lwm-pack books --input 'books/*.jsonl.zst' --tokenizer tokenizer.model --seq-len 32768 --output out/
    lwm-pack images --input 'shards/*.tar' --tokenizer tokenizer.model --vqgan vqgan.safetensors --output out/
    lwm-pack train-tokenizer --input 'books/*.jsonl.zst' --vocab-size 32000 --output tokenizer.model
    lwm-pack pack --documents out/documents --schedule lwm-text --output stages/
    lwm-pack report out/
    lwm-pack inspect out/ [--record N] [--tokenizer tokenizer.model] [--render frames/ [--vqgan WEIGHTS]]
    lwm-pack export --format lwm-jsonl out/ --output lwm.jsonl
    lwm-pack qa --input 'books/*.jsonl.zst' --tokenizer tokenizer.model --output qa/ [--generator openai --base-url URL --model M]
    lwm-pack videos --input 'webvid/*.csv' --tokenizer tokenizer.model --vqgan vqgan.safetensors --output out/

Options `lwm-pack books` does not know are passed to Beam (e.g. Dataflow's `--project`). With
Beam's `--dry_run=True` and `--runner DataflowRunner`, `books`, `images`, `videos` and `qa` build and
check the Dataflow job without submitting it (see `dataflow.py`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from lwmkit.pipelines.cli.vqgan import add_vqgan_arguments, vqgan_option_values


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def _inputs(values: list[str]) -> tuple[str, ...]:
    return tuple(p for v in values for p in v.split(",") if p)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lwm-pack", description="Build long-context token shards in the Large World Model format."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="build and read back a small corpus from a built-in sample (no downloads)")
    demo.add_argument("output", help="directory for the sample, tokenizer and shards")
    demo.add_argument("--tokenizer", help="a SentencePiece .model to use instead of training one")
    demo.add_argument("--books", type=int, default=24, help="number of sample books (default 24)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--videos", type=int, default=2, help="generated clips for the video part (0: none; default 2)")
    demo.add_argument("--quiet", action="store_true", help="no progress lines")

    books = sub.add_parser(
        "books",
        help="Books3-style text -> document and packed token shards (Beam job)",
        epilog="Unknown options are passed to Beam, e.g. --project, --region, --temp_location for Dataflow.",
    )
    books.add_argument("--input", action="append", required=True, help="file glob (.jsonl.zst, .jsonl, .txt, .parquet); repeatable")
    books.add_argument("--tokenizer", required=True, help="SentencePiece .model (e.g. LLaMA-2's tokenizer.model)")
    books.add_argument("--seq-len", type=_int_list, default=(32768,), help="packed lengths, e.g. 32768,131072")
    books.add_argument("--output", required=True, help="output directory (local or any Beam filesystem)")
    books.add_argument("--text-key", default="text", help="JSON key / parquet column of the text")
    books.add_argument("--min-chars", type=int, default=1)
    books.add_argument("--max-chars", type=int, default=None)
    _work_arguments(books)
    books.add_argument("--work-unit-mb", type=float, default=64.0,
                       help="size of a work-store unit in MiB (memory per worker grows with it; default 64)")
    _run_arguments(books)
    _pack_arguments(books)
    _images_parser(sub)
    from lwmkit.pipelines.cli.qa import add_qa_parser

    add_qa_parser(sub, _run_arguments, _pack_arguments)
    from lwmkit.pipelines.cli.videos import add_videos_parser

    add_videos_parser(sub, _job_arguments, _pack_arguments, _int_list)

    pack = sub.add_parser(
        "pack",
        help="pack a documents/ directory into every stage of a progressive context schedule (Beam job)",
        epilog="Unknown options are passed to Beam.",
    )
    pack.add_argument("--documents", required=True, help="a documents/ directory written by `lwm-pack books`")
    pack.add_argument(
        "--schedule", required=True,
        help="stage lengths, e.g. 32768,131072, or a named schedule: lwm-text (32K..1M), lwm-vision (1K..1M)",
    )
    pack.add_argument("--min-doc-tokens", type=_int_list, default=(), help="per stage, the shortest document kept")
    pack.add_argument("--output", required=True)
    _run_arguments(pack)
    _pack_arguments(pack)

    rep = sub.add_parser("report", help="write an HTML corpus report with plots (lengths, fill, modality, loss, cuts)")
    rep.add_argument("directory", help="an lwm-pack output directory (or one dataset directory)")
    rep.add_argument("--output", help="folder for index.html (default DIRECTORY/report)")

    tt = sub.add_parser("train-tokenizer", help="train a LLaMA-style BPE SentencePiece model on your text")
    tt.add_argument("--input", action="append", required=True, help="file glob; repeatable")
    tt.add_argument("--vocab-size", type=int, default=32000)
    tt.add_argument("--output", required=True, help="path of the .model file to write")
    tt.add_argument("--text-key", default="text")
    tt.add_argument("--seed", type=int, default=0)
    tt.add_argument("--max-lines", type=int, default=2_000_000, help="lines SentencePiece samples (default 2M)")

    ins = sub.add_parser("inspect", help="check an output directory against its manifest and show a record")
    ins.add_argument("directory")
    ins.add_argument("--record", type=int, default=0, help="record index to show (default 0)")
    ins.add_argument("--tokenizer", help="tokenizer to render text with (default: the one in the manifest)")
    ins.add_argument("--no-checksums", action="store_true", help="skip re-hashing shards")
    ins.add_argument("--max-tokens", type=int, default=200, help="tokens shown per segment")
    ins.add_argument("--render", metavar="OUT_DIR", help="also decode the record's vision frames to PNGs in OUT_DIR")
    ins.add_argument("--vqgan", metavar="WEIGHTS", help="VQGAN weights for --render (default: the manifest's)")

    exp = sub.add_parser("export", help="write a dataset's documents in another trainer's format (LWM's json_vision)")
    exp.add_argument("directory", help="a job directory or its documents/ dataset")
    exp.add_argument("--format", default="lwm-jsonl", choices=["lwm-jsonl"], help="output format (default lwm-jsonl)")
    exp.add_argument("--output", required=True, help="the .jsonl file to write")
    exp.add_argument("--tokenizer", help="tokenizer to decode text with (default: the one in the manifest)")
    return parser


def _work_arguments(parser: argparse.ArgumentParser) -> None:
    """--retry-failures and --discard-work: jobs that resume from their work store (<output>/.work)."""
    parser.add_argument("--retry-failures", action="store_true",
                        help="run again over a finished output: process only the rows of its failures.jsonl and "
                             "merge them with what it kept (from the work store, <output>/.work)")
    parser.add_argument("--discard-work", action="store_true",
                        help="delete the work store (<output>/.work) after success; --retry-failures and other "
                             "--seq-len values then process everything again")


def _work_options(args) -> dict:
    return {"retry_failures": args.retry_failures, "keep_work": not args.discard_work}


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    """`_run_arguments` and `_work_arguments`: a job that resumes from its work store."""
    _run_arguments(parser)
    _work_arguments(parser)


def _print_retry(manifest: dict) -> None:
    from lwmkit.pipelines.engine.resume import retry_summary

    if line := retry_summary(manifest):
        print(line)


def _pack_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("packing")
    g.add_argument("--long-document-policy", default="split", choices=["split", "truncate", "drop"],
                   help="documents longer than seq_len: split between atomic spans, keep the first piece, or drop")
    g.add_argument("--piece-positions", default="restart", choices=["restart", "continue"],
                   help="positions of a split document's later pieces")
    g.add_argument("--loss-policy", default="as_is",
                   help="as_is, lwm_balance, per_document, modality:text=1,vision=0.5, or a '+' combination")
    g.add_argument("--pack-window", type=int, default=None,
                   help="documents packed together; set it to pack windows in parallel (default: one global pass)")
    g.add_argument("--top-up-below", type=float, default=0.99,
                   help="with --pack-window, re-pack records filled below this share in a final pass")
    g.add_argument("--pack-seed", type=int, default=None, help="shuffle documents before packing")


def _pack_options(args):
    from lwmkit.pipelines.writing.plan import PackOptions

    return PackOptions(
        policy=args.long_document_policy,
        piece_positions=args.piece_positions,
        loss_policy=args.loss_policy,
        window=args.pack_window,
        top_up_below=args.top_up_below,
        seed=args.pack_seed,
    )


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every Beam job takes: where it runs, shard size, rebuild, progress."""
    parser.add_argument("--shard-tokens", type=int, default=1 << 24, help="target tokens per shard file")
    parser.add_argument("--runner", default="DirectRunner")
    parser.add_argument("--direct-running-mode", default="in_memory", choices=["in_memory", "multi_processing"])
    parser.add_argument("--direct-num-workers", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is complete")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _run_options(args, beam_args: list[str]) -> dict:
    return {
        "shard_tokens": args.shard_tokens,
        "runner": args.runner,
        "direct_running_mode": args.direct_running_mode,
        "direct_num_workers": args.direct_num_workers,
        "progress": not args.quiet,
        "beam_args": tuple(beam_args),
        "force": args.force,
    }


def _stages(args, beam_args: list[str]) -> None:
    from lwmkit.pipelines.pack.job import StagesOptions, parse_schedule, run_stages

    manifest = run_stages(
        StagesOptions(
            documents=args.documents,
            output=args.output,
            schedule=parse_schedule(args.schedule),
            min_doc_tokens=args.min_doc_tokens,
            pack=_pack_options(args),
            **_run_options(args, beam_args),
        )
    )
    for stage in manifest.get("stages_schedule", []):
        print(
            f"seq_len {stage['seq_len']:>8}: {stage['records']} records, fill {stage['fill']:.2%}, "
            f"rope_theta {stage['rope_theta']:g}, {stage['documents_long_enough']} documents long enough"
        )


def _books(args, beam_args: list[str]) -> None:
    from lwmkit.pipelines.books.job import BooksOptions, run_books
    from lwmkit.pipelines.engine.dataflow import dry_run_instead

    options = BooksOptions(
        inputs=_inputs(args.input),
        output=args.output,
        tokenizer=args.tokenizer,
        seq_lens=args.seq_len,
        text_key=args.text_key,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        pack=_pack_options(args),
        retry_failures=args.retry_failures,
        keep_work=not args.discard_work,
        unit_bytes=max(1, int(args.work_unit_mb * (1 << 20))),
        **_run_options(args, beam_args),
    )
    if dry_run_instead(options):
        return
    manifest = run_books(options)
    summary = ", ".join(f"{k}: {v['records']} records" for k, v in manifest["datasets"].items())
    print(f"{manifest['documents']} documents -> {summary}; {manifest['failures']['total']} failures")
    _print_retry(manifest)


def _images_parser(sub) -> None:
    im = sub.add_parser(
        "images",
        help="image-text pairs (webdataset tars, parquet, folders, URL lists) -> vision-text token shards (Beam job)",
        epilog="Unknown options are passed to Beam. Without --vqgan the VQGAN is randomly initialised (tests only).",
    )
    im.add_argument("--input", action="append", required=True,
                    help="file glob or folder (.tar/.tar.gz webdataset, .parquet, captions .jsonl); repeatable")
    im.add_argument("--tokenizer", required=True, help="SentencePiece .model (e.g. LLaMA-2's tokenizer.model)")
    im.add_argument("--output", required=True, help="output directory (local or any Beam filesystem)")
    im.add_argument("--seq-len", type=_int_list, default=(8192,), help="packed lengths, e.g. 8192,32768")
    add_vqgan_arguments(im, "images")
    e = im.add_argument_group("examples")
    e.add_argument("--generation-fraction", type=float, default=0.5, help="share of generation examples (default 0.5)")
    e.add_argument("--seed", type=int, default=0, help="seed of the per-pair understanding/generation choice")
    e.add_argument("--templates", default="lwm", choices=["lwm", "lwm_chat"], help="template preset (default lwm)")
    e.add_argument("--understanding-template", help="overrides the preset, e.g. '{vision}{caption}'")
    e.add_argument("--generation-template", help="overrides the preset, e.g. '{caption}{vision}'")
    s = im.add_argument_group("inputs and images")
    s.add_argument("--image-column", help="parquet column / jsonl key of the image (default: image, jpg, png, ...)")
    s.add_argument("--caption-column", help="parquet column / json key of the caption (default: caption, text, ...)")
    s.add_argument("--url-column", help="parquet column of the URL (default: url)")
    s.add_argument("--max-image-bytes", type=int, default=32 << 20, help="larger images or downloads are dropped")
    s.add_argument("--small-images", default="upscale", choices=["upscale", "drop"], help="images under 256 px")
    s.add_argument("--min-side", type=int, default=32, help="images with a shorter side are always dropped")
    s.add_argument("--max-pixels", type=int, default=89_478_485, help="decompression-bomb cap (width x height)")
    s.add_argument("--animated", default="first_frame", choices=["first_frame", "drop"])
    s.add_argument("--download-timeout", type=float, default=10.0, help="seconds per connect/read")
    s.add_argument("--download-retries", type=int, default=2)
    s.add_argument("--download-backoff", type=float, default=1.0, help="seconds before the first retry (doubles)")
    s.add_argument("--allow-file-urls", action="store_true", help="also fetch file:// URLs")
    s.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                   help="fetch from this host or IP even if it is private/loopback (repeatable)")
    s.add_argument("--allow-private-addresses", action="store_true",
                   help="fetch from any private, loopback or link-local address")
    _job_arguments(im)
    _pack_arguments(im)


def _images(args, beam_args: list[str]) -> None:
    from lwmkit.pipelines.engine.dataflow import dry_run_instead
    from lwmkit.pipelines.examples.vision_text import Templates
    from lwmkit.pipelines.images.download import DownloadOptions
    from lwmkit.pipelines.images.job import ImagesOptions, run_images
    from lwmkit.pipelines.images.sources import SourceOptions
    from lwmkit.tokenizers.vision import ImageOptions

    preset = Templates.preset(args.templates)
    options = ImagesOptions(
        inputs=_inputs(args.input),
        output=args.output,
        tokenizer=args.tokenizer,
        seq_lens=args.seq_len,
        generation_fraction=args.generation_fraction,
        seed=args.seed,
        templates=Templates(
            args.understanding_template or preset.understanding, args.generation_template or preset.generation
        ),
        sources=SourceOptions(args.image_column, args.caption_column, args.url_column, args.max_image_bytes),
        images=ImageOptions(args.small_images, args.max_pixels, args.animated, args.min_side),
        download=DownloadOptions(
            timeout_s=args.download_timeout,
            total_timeout_s=max(60.0, args.download_timeout),
            retries=args.download_retries,
            backoff_s=args.download_backoff,
            max_bytes=args.max_image_bytes,
            allow_file=args.allow_file_urls,
            allow_private=args.allow_private_addresses,
            allowed_hosts=tuple(args.allow_host),
        ),
        **vqgan_option_values(args),
        pack=_pack_options(args),
        **_work_options(args),
        **_run_options(args, beam_args),
    )
    if dry_run_instead(options):
        return
    manifest = run_images(options)
    summary = ", ".join(f"{k}: {v['records']} records" for k, v in manifest["datasets"].items())
    print(f"{manifest['documents']} image-text examples -> {summary}; {manifest['failures']['total']} failures")
    _print_retry(manifest)


def _train_tokenizer(args) -> None:
    from lwmkit.pipelines.books.job import match_inputs
    from lwmkit.pipelines.books.sources import iter_texts
    from lwmkit.pipelines.engine.outputs import write_output_bytes
    from lwmkit.tokenizers.text import train_bpe

    files = match_inputs(_inputs(args.input))
    lines = (line for f in files for text in iter_texts(f, args.text_key) for line in text.split("\n"))
    model = train_bpe(lines, args.vocab_size, seed=args.seed, input_sentence_size=args.max_lines)
    write_output_bytes(args.output, model)
    print(f"wrote {args.output} ({args.vocab_size} pieces, trained on {len(files)} files)")


class _QuietBeamImportWarning(logging.Filter):
    """Drops Beam's import-time note about optional GCP client libraries (not an lwmkit problem)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger().addFilter(_QuietBeamImportWarning())
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command not in ("books", "pack", "images", "qa", "videos"):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "pack" and any(a.startswith("--dry_run") for a in unknown):
        parser.error("--dry_run: `lwm-pack pack` has no dry run (books, images, videos and qa have)")
    try:
        if args.command == "demo":
            from lwmkit.pipelines.tools.demo import run_demo

            run_demo(args.output, tokenizer=args.tokenizer, books=args.books, seed=args.seed, progress=not args.quiet,
                     videos=args.videos)
        elif args.command == "books":
            _books(args, unknown)
        elif args.command == "videos":
            from lwmkit.pipelines.cli.videos import run_videos_command

            run_videos_command(args, {**_run_options(args, unknown), **_work_options(args)}, _pack_options(args))
        elif args.command == "qa":
            from lwmkit.pipelines.cli.qa import run_qa_command

            run_qa_command(args, _run_options(args, unknown), _pack_options(args))
        elif args.command == "images":
            _images(args, unknown)
        elif args.command == "pack":
            _stages(args, unknown)
        elif args.command == "report":
            from lwmkit.pipelines.tools.report import write_report

            print(write_report(args.directory, args.output))
        elif args.command == "train-tokenizer":
            _train_tokenizer(args)
        elif args.command == "inspect":
            from lwmkit.pipelines.tools.inspection import inspect

            inspect(
                args.directory,
                sys.stdout,
                record=args.record,
                tokenizer=args.tokenizer,
                checksums=not args.no_checksums,
                max_tokens=args.max_tokens,
                render=args.render,
                vqgan=args.vqgan,
            )
        elif args.command == "export":
            from lwmkit.pipelines.tools.export import describe, run_export

            print(describe(run_export(args.format, args.directory, args.output, args.tokenizer)))
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"lwm-pack {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
