"""`lwm-pack report`: an HTML corpus report with plots."""

from __future__ import annotations


def add_parser(sub) -> None:
    """Adds the command to the subparsers `sub`."""
    rep = sub.add_parser("report", help="write an HTML corpus report with plots (lengths, fill, modality, loss, cuts)")
    rep.add_argument("directory", help="an lwm-pack output directory (or one dataset directory)")
    rep.add_argument("--output", help="folder for index.html (default DIRECTORY/report)")


def run(args, beam_args: list[str]) -> None:
    """Writes the report and prints where."""
    from lwmkit.pipelines.tools.report import write_report

    print(write_report(args.directory, args.output))
