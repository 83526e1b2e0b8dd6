"""The frame of a job command (`books`, `images`, `videos`, `video-qa`, `qa`, `pack`): its parser,
the input, tokenizer, output and length arguments most of them take, the options fields those
give, and the line a finished job prints about its datasets.

Example (a command module's `add_parser` and `run`):
    v = add_job_parser(sub, "videos", "videos -> video-text token shards (Beam job)")
    add_io_arguments(v, "video list glob (.parquet, .csv, .jsonl); repeatable", (32768,),
                     "packed lengths, e.g. 32768,131072")
    ...
    options = VideosOptions(**io_option_values(args), ...)
    print_datasets(run_videos(options), "video examples")
    # 12 video examples -> packed-32768: 3 records; 0 failures
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from lwmkit.pipelines.cli.common import int_list, print_retry, split_inputs

BEAM_EPILOG = "Unknown options are passed to Beam."
VQGAN_EPILOG = f"{BEAM_EPILOG} Without --vqgan the VQGAN is randomly initialised (tests only)."
TOKENIZER_HELP = "SentencePiece .model (e.g. LLaMA-2's tokenizer.model)"
OUTPUT_HELP = "output directory (local or any Beam filesystem)"
# Options fields -> the arguments that give them (`arg_values`), of the model client (qa, video-qa)
# and of downloads (images, videos).
CLIENT_ARGS = {"api_key_env": "api_key_env", "timeout_s": "timeout", "retries": "retries", "concurrency": "concurrency"}
DOWNLOAD_ARGS = {"retries": "download_retries", "backoff_s": "download_backoff"}


def add_job_parser(sub, name: str, help: str, epilog: str = VQGAN_EPILOG) -> argparse.ArgumentParser:
    """The subcommand `name` of the subparsers `sub`, with its one-line `help` and `epilog`."""
    return sub.add_parser(name, help=help, epilog=epilog)


def add_io_arguments(parser: argparse.ArgumentParser, input_help: str, seq_lens: tuple[int, ...], seq_len_help: str,
                     tokenizer_help: str = TOKENIZER_HELP) -> None:
    """--input (required, repeatable), --tokenizer, --output and --seq-len (default `seq_lens`)."""
    parser.add_argument("--input", action="append", required=True, help=input_help)
    parser.add_argument("--tokenizer", required=True, help=tokenizer_help)
    parser.add_argument("--output", required=True, help=OUTPUT_HELP)
    parser.add_argument("--seq-len", type=int_list, default=seq_lens, help=seq_len_help)


def io_option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The job options' fields of `add_io_arguments`: inputs, output, tokenizer, seq_lens."""
    return {"inputs": split_inputs(args.input), "output": args.output, "tokenizer": args.tokenizer,
            "seq_lens": args.seq_len}


def add_example_arguments(parser: argparse.ArgumentParser, generation_help: str, unit: str):
    """The "examples" group of a job that makes understanding and generation examples (images,
    videos): --generation-fraction (`generation_help`), --seed (of the choice per `unit`) and
    --templates; returns the group for the job's own."""
    e = parser.add_argument_group("examples")
    e.add_argument("--generation-fraction", type=float, default=0.5, help=generation_help)
    e.add_argument("--seed", type=int, default=0, help=f"seed of the per-{unit} understanding/generation choice")
    e.add_argument("--templates", default="lwm", choices=["lwm", "lwm_chat"], help="template preset (default lwm)")
    return e


def add_access_arguments(group, verb: str, file_help: str) -> None:
    """What a job's downloads may reach (images, videos): --allow-file-urls (`file_help`), --allow-host,
    --allow-private-addresses and --ca-bundle; `verb` says what the job does with a URL ("fetch")."""
    group.add_argument("--allow-file-urls", action="store_true", help=file_help)
    group.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                       help=f"{verb} from this host or IP even if it is private/loopback (repeatable)")
    group.add_argument("--allow-private-addresses", action="store_true",
                       help=f"{verb} from any private, loopback or link-local address")
    group.add_argument("--ca-bundle", metavar="PEM", help="CA certificates trusted besides the system store "
                       "(default: $SSL_CERT_FILE); TLS verification cannot be turned off")


def access_values(args: argparse.Namespace) -> dict[str, Any]:
    """The download options' fields of `add_access_arguments`."""
    return {"allow_file": args.allow_file_urls, "allow_private": args.allow_private_addresses,
            "allowed_hosts": tuple(args.allow_host), "ca_bundle": args.ca_bundle}


def arg_values(args: argparse.Namespace, *same: str, **renamed: str) -> dict[str, Any]:
    """Options fields from parsed arguments: each of `same` from the argument of its own name, each
    key of `renamed` from the argument its value names.

    Example:
        arg_values(args, "retries", timeout_s="timeout")   # {"retries": args.retries, "timeout_s": args.timeout}
    """
    return {**{name: getattr(args, name) for name in same},
            **{name: getattr(args, arg) for name, arg in renamed.items()}}


def dry_run_instead(options: Any, job_module: str) -> bool:
    """`engine.dataflow.dry_run_instead` for a job command: with Beam's --dry_run, the job's module
    (`job_module` under `lwmkit.pipelines`, e.g. "images.job", which registers its graph) is imported
    first; without it nothing more loads, so the quick no-op answer that follows stays Beam-free."""
    from lwmkit.pipelines.engine.dataflow import dry_run_instead as dry_run_of
    from lwmkit.pipelines.engine.dataflow import dry_run_requested

    if dry_run_requested(options.beam_args):
        importlib.import_module(f"lwmkit.pipelines.{job_module}")
    return dry_run_of(options)


def print_datasets(manifest: dict[str, Any], what: str) -> None:
    """Prints the finished job's line, "<documents> <what> -> <dataset>: <n> records, ...; <n> failures",
    and the line of its retry when it was one."""
    summary = ", ".join(f"{k}: {v['records']} records" for k, v in manifest["datasets"].items())
    print(f"{manifest['documents']} {what} -> {summary}; {manifest['failures']['total']} failures")
    print_retry(manifest)
