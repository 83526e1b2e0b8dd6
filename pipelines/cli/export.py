"""`lwm-pack export`: a dataset's documents in another trainer's format (LWM's json_vision)."""

from __future__ import annotations


def add_parser(sub) -> None:
    """Adds the command to the subparsers `sub`."""
    exp = sub.add_parser("export", help="write a dataset's documents in another trainer's format (LWM's json_vision)")
    exp.add_argument("directory", help="a job directory or its documents/ dataset")
    exp.add_argument("--format", default="lwm-jsonl", choices=["lwm-jsonl"], help="output format (default lwm-jsonl)")
    exp.add_argument("--output", required=True, help="the .jsonl file to write")
    exp.add_argument("--tokenizer", help="tokenizer to decode text with (default: the one in the manifest)")


def run(args, beam_args: list[str]) -> None:
    """Exports and prints what was written."""
    from lwmkit.pipelines.tools.export import describe, run_export

    print(describe(run_export(args.format, args.directory, args.output, args.tokenizer)))
