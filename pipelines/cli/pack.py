"""`lwm-pack pack`: a documents/ directory -> every stage of a progressive context schedule."""

from __future__ import annotations

from lwmkit.pipelines.cli import common, job_command


def add_parser(sub) -> None:
    """Adds the command to the subparsers `sub`."""
    pack = job_command.add_job_parser(
        sub, "pack", "pack a documents/ directory into every stage of a progressive context schedule (Beam job)",
        job_command.BEAM_EPILOG)
    pack.add_argument("--documents", required=True, help="a documents/ directory written by `lwm-pack books`")
    pack.add_argument(
        "--schedule", required=True,
        help="stage lengths, e.g. 32768,131072, or a named schedule: lwm-text (32K..1M), lwm-vision (1K..1M)",
    )
    pack.add_argument("--min-doc-tokens", type=common.int_list, default=(), help="per stage, the shortest document kept")
    pack.add_argument("--output", required=True)
    common.run_arguments(pack)
    common.pack_arguments(pack)


def run(args, beam_args: list[str]) -> None:
    """Packs a documents/ directory into every stage of the schedule and prints each stage.

    A documents/ directory without a readable manifest of document records is refused, and a rerun
    over a complete local output is answered (`pack.options.complete_stages`), before Beam loads.
    """
    from lwmkit.pipelines.pack.options import (
        StagesOptions,
        complete_stages,
        parse_schedule,
        read_source,
    )

    options = StagesOptions(
        documents=args.documents,
        output=args.output,
        schedule=parse_schedule(args.schedule),
        min_doc_tokens=args.min_doc_tokens,
        pack=common.pack_options(args),
        **common.run_options(args, beam_args),
    )
    read_source(options)  # raises what run_stages would for the documents, before Beam loads
    if (manifest := complete_stages(options)) is None:
        from lwmkit.pipelines.pack.job import run_stages

        manifest = run_stages(options)
    for stage in manifest.get("stages_schedule", []):
        print(
            f"seq_len {stage['seq_len']:>8}: {stage['records']} records, fill {stage['fill']:.2%}, "
            f"rope_theta {stage['rope_theta']:g}, {stage['documents_long_enough']} documents long enough"
        )
