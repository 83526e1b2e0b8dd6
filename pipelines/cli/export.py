"""`lwm-pack export`: a dataset's documents in another trainer's format (LWM's json_vision)."""

from __future__ import annotations

import argparse

LWM_TOKENIZER_SETTINGS = """\
LWM's loader must read these lines with the dataset's tokenizer loaded as
  AutoTokenizer.from_pretrained(path, add_bos_token=False, add_eos_token=False)
LWM adds BOS and EOS itself; transformers' default add_bos_token=True puts a stray BOS before
every text field. Special-token parsing may stay on (the default) or off
(split_special_tokens=True): a record whose text holds <s>, </s> or <unk>, which Hugging Face
reads as special ids (an EOS in mid-document), is never written; it stops the export, or with
--skip-unexportable is skipped and counted as special_token_text."""


def add_parser(sub) -> None:
    """Adds the command to the subparsers `sub`."""
    exp = sub.add_parser(
        "export",
        help="write a dataset's documents in another trainer's format (LWM's json_vision)",
        description="Write a dataset's documents as LWM json_vision lines that LWM's data.py reads back.",
        epilog=LWM_TOKENIZER_SETTINGS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("directory", help="a job directory or its documents/ dataset")
    exp.add_argument("--format", default="lwm-jsonl", choices=["lwm-jsonl"], help="output format (default: lwm-jsonl)")
    exp.add_argument("--output", required=True, help="the .jsonl file to write")
    exp.add_argument("--tokenizer", help="tokenizer to decode text with (default: the one in the manifest)")
    exp.add_argument(
        "--skip-unexportable",
        action="store_true",
        help="skip and count records LWM cannot read back exactly (default: the first one stops the export)",
    )
    exp.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")


def run(args, beam_args: list[str]) -> None:
    """Exports and prints what was written."""
    from lwmkit.pipelines.tools.export import describe, run_export

    summary = run_export(args.format, args.directory, args.output, args.tokenizer, strict=not args.skip_unexportable,
                         progress=not args.quiet)
    print(describe(summary))
