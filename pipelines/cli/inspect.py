"""`lwm-pack inspect`: an output directory checked against its manifest, one record shown."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    """Adds the command to the subparsers `sub`."""
    ins = sub.add_parser("inspect", help="check an output directory against its manifest and show a record")
    ins.add_argument("directory")
    ins.add_argument("--record", type=int, default=0, help="record index to show (default 0)")
    ins.add_argument("--tokenizer", help="tokenizer to render text with (default: the one in the manifest)")
    ins.add_argument("--no-checksums", action="store_true", help="skip re-hashing shards")
    ins.add_argument("--max-tokens", type=int, default=200, help="tokens shown per segment")
    ins.add_argument("--render", metavar="OUT_DIR", help="also decode the record's vision frames to PNGs in OUT_DIR")
    ins.add_argument("--vqgan", metavar="WEIGHTS", help="VQGAN weights for --render (default: the manifest's)")
    ins.add_argument("--quiet", action="store_true", help="no progress bar for --render (none when stderr is not a terminal)")


def run(args, beam_args: list[str]) -> None:
    """Checks the output and prints the record."""
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
        progress=not args.quiet,
    )
