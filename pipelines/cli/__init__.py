"""`lwm-pack`: the command line. A dispatch table (`COMMANDS`) names one thin module per command; each
has `add_parser(sub)` and `run(args, beam_args)`, and imports no Beam until it runs. Shared argument
groups are in `common.py`.

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
    lwm-pack video-qa --input 'videos/*.mp4' --tokenizer tokenizer.model --output vqa/ [--base-url URL --model M]

Options `lwm-pack books` does not know are passed to Beam (e.g. Dataflow's `--project`); an argument
that is neither (say, the second file of an unquoted glob) is an error naming it (`beam_args.py`). With
Beam's `--dry_run=True` and `--runner DataflowRunner`, `books`, `images`, `videos` and `qa` build and
check the Dataflow job without submitting it (see `engine/dataflow/dry_run.py`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from lwmkit.pipelines.cli import beam_args

# command -> module under lwmkit.pipelines.cli, in the order `--help` lists them.
COMMANDS = {
    "demo": "demo",
    "books": "books",
    "images": "images",
    "qa": "qa",
    "videos": "videos",
    "video-qa": "video_qa",
    "pack": "pack",
    "report": "report",
    "train-tokenizer": "train_tokenizer",
    "inspect": "inspect",
    "export": "export",
}
# Commands that run a Beam job: options they do not know are passed to Beam.
BEAM_COMMANDS = ("books", "pack", "images", "qa", "videos", "video-qa")


def _module(command: str):
    return importlib.import_module(f"lwmkit.pipelines.cli.{COMMANDS[command]}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lwm-pack", description="Build long-context token shards in the Large World Model format."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        _module(command).add_parser(sub)
    for command_parser in sub.choices.values():
        _show_defaults(command_parser)
    return parser


def _default_text(value) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Appends "(default: X)" to the help of every option that has a default and does not name it yet.

    Options without a default (None), flags (False) and required ones are left alone, so `--help`
    never says "(default: None)". Example: --min-chars -> "--min-chars MIN_CHARS  (default: 1)".
    """
    for action in parser._actions:
        default = action.default
        if action.required or default is None or default is False or default == argparse.SUPPRESS:
            continue
        if not action.option_strings or "default" in (action.help or "") or action.help == argparse.SUPPRESS:
            continue
        shown = f"(default: {_default_text(default).replace('%', '%%')})"
        action.help = f"{action.help} {shown}" if action.help else shown


class _QuietBeamImportWarning(logging.Filter):
    """Drops Beam's import-time note about optional GCP client libraries (not an lwmkit problem)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger().addFilter(_QuietBeamImportWarning())
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command not in BEAM_COMMANDS:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown and (stray := beam_args.unknown_arguments(unknown)):
        parser.error(beam_args.error_message(stray))
    if args.command == "pack" and any(a.startswith("--dry_run") for a in unknown):
        parser.error("--dry_run: `lwm-pack pack` has no dry run (books, images, videos and qa have)")
    try:
        _module(args.command).run(args, unknown)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"lwm-pack {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
