"""What the `lwm-pack` job commands share: argument groups and the options they become.

Every Beam job takes the run arguments (`run_arguments` -> `run_options`: where it runs, shard
size, rebuild, progress) and the packing group (`pack_arguments` -> `pack_options`); jobs that
resume from their work store add `work_arguments` (`job_arguments` adds both).
"""

from __future__ import annotations

import argparse


def int_list(text: str) -> tuple[int, ...]:
    """argparse type of "32768,131072": a tuple of ints (underscores allowed)."""
    try:
        return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def split_inputs(values: list[str]) -> tuple[str, ...]:
    """`--input` values, each possibly comma-separated, as one tuple of patterns."""
    return tuple(p for v in values for p in v.split(",") if p)


def check_local_inputs(patterns: tuple[str, ...], tokenizer: str | None = None) -> None:
    """Fails fast, before Beam or a job module loads, on a local `--input` glob that matches nothing
    or a local `--tokenizer` that does not exist (the job checks both again, and remote paths, as
    `engine.inputs` does: this only answers the common mistake in a fraction of a second).

    Raises:
      FileNotFoundError: `--input 'PATTERN' matches no file` or `--tokenizer PATH: no such file`.
    """
    import glob
    import os

    for pattern in patterns:
        if "://" not in pattern and not glob.glob(pattern, recursive=True, include_hidden=True):
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
    if tokenizer and "://" not in tokenizer and not os.path.exists(tokenizer):
        raise FileNotFoundError(f"--tokenizer {tokenizer}: no such file")


def work_arguments(parser: argparse.ArgumentParser) -> None:
    """--retry-failures and --discard-work: jobs that resume from their work store (<output>/.work)."""
    parser.add_argument("--retry-failures", action="store_true",
                        help="run again over a finished output: process only the rows of its failures.jsonl and "
                             "merge them with what it kept (from the work store, <output>/.work)")
    parser.add_argument("--discard-work", action="store_true",
                        help="delete the work store (<output>/.work) after success; --retry-failures and other "
                             "--seq-len values then process everything again")


def work_options(args) -> dict:
    """`ResumeOptions` fields of `work_arguments`."""
    return {"retry_failures": args.retry_failures, "keep_work": not args.discard_work}


def job_arguments(parser: argparse.ArgumentParser) -> None:
    """`run_arguments` and `work_arguments`: a job that resumes from its work store."""
    run_arguments(parser)
    work_arguments(parser)


def print_retry(manifest: dict) -> None:
    from lwmkit.pipelines.engine.lifecycle import retry_summary  # no Beam (no-op reruns)

    if line := retry_summary(manifest):
        print(line)


def pack_arguments(parser: argparse.ArgumentParser) -> None:
    """The packing group: long documents, piece positions, loss policy, windows, seed."""
    g = parser.add_argument_group("packing")
    g.add_argument("--long-document-policy", default="by_kind",
                   help="examples longer than seq_len. by_kind: text is split, an understanding example keeps its "
                        "tail (whole leading frames dropped), a generation example repeats its caption before each "
                        "continuation, a chat example is dropped; override per kind with by_kind:chat=keep_tail,...; "
                        "or split, truncate, drop for every kind")
    g.add_argument("--piece-positions", default="restart", choices=["restart", "continue"],
                   help="positions of a split document's later pieces")
    g.add_argument("--loss-policy", default="as_is",
                   help="as_is, lwm_balance, per_document, modality:text=1,vision=0.5, or a '+' combination")
    g.add_argument("--pack-window", type=int, default=None,
                   help="documents packed together; set it to pack windows in parallel (default: one global pass)")
    g.add_argument("--top-up-below", type=float, default=0.99,
                   help="with --pack-window, re-pack records filled below this share in a final pass")
    g.add_argument("--pack-seed", type=int, default=None, help="shuffle documents before packing")


def pack_options(args):
    """`PackOptions` of `pack_arguments`."""
    from lwmkit.pipelines.writing.plan import PackOptions

    return PackOptions(
        policy=args.long_document_policy,
        piece_positions=args.piece_positions,
        loss_policy=args.loss_policy,
        window=args.pack_window,
        top_up_below=args.top_up_below,
        seed=args.pack_seed,
    )


def run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every Beam job takes: where it runs, shard size, rebuild, progress."""
    parser.add_argument("--shard-tokens", type=int, default=1 << 24, help="target tokens per shard file")
    parser.add_argument("--runner", default="DirectRunner",
                        help="a Beam runner: DirectRunner, DaskRunner, PortableRunner, DataflowRunner, ...")
    parser.add_argument("--direct-running-mode", default="in_memory", choices=["in_memory", "multi_processing"])
    parser.add_argument("--direct-num-workers", type=int, default=0,
                        help="worker processes of the DirectRunner, or of the local Dask cluster (default 2)")
    parser.add_argument("--dask-address", default=None,
                        help="the Dask scheduler of --runner DaskRunner (without it: a local cluster for the run)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is complete")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run_options(args, beam_args: list[str]) -> dict:
    """`RunOptions` fields (and shard_tokens) of `run_arguments`; `beam_args` are the unknown options."""
    return {
        "shard_tokens": args.shard_tokens,
        "runner": args.runner,
        "direct_running_mode": args.direct_running_mode,
        "direct_num_workers": args.direct_num_workers,
        "progress": not args.quiet,
        "beam_args": tuple(beam_args) + ((f"--dask_client_address={args.dask_address}",) if args.dask_address else ()),
        "force": args.force,
    }


def near_dedup_arguments(parser, threshold: str, default: float, unit: type = float) -> None:
    """`--near-dedup` and `--near-threshold` (what the threshold means: `threshold`); see docs/near-dedup.md."""
    group = parser.add_argument_group("near-duplicates (off by default; docs/near-dedup.md)")
    group.add_argument("--near-dedup", action="store_true",
                       help="remove near-copies after exact dedup; each removed one is a failures.jsonl row "
                            "dedup:near_duplicate naming the kept twin and the similarity")
    group.add_argument("--near-threshold", type=unit, default=default, help=f"{threshold} (default {default})")


def near_dedup_options(args) -> dict:
    """The job options of `near_dedup_arguments`."""
    return {"near_dedup": args.near_dedup, "near_threshold": args.near_threshold}
