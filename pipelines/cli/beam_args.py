"""What a Beam job's command line may pass on to Beam: known Beam options only, nothing stray.

argparse leaves every argument `lwm-pack books` does not know for Beam, and Beam drops what it
cannot parse with a log line ("Discarding unparseable args"). An unquoted glob is the common way to
get there: `--input books/*.jsonl.zst` expanded by the shell reads only the first file, the rest
become stray words and the job "succeeds" on a fraction of its inputs. `unknown_arguments` names
every argument that is neither an lwm-pack option nor an option some Beam `PipelineOptions` class
declares (with its value); a stray word is found without importing Beam.

Example:
    unknown_arguments(["b.jsonl.zst", "--project", "p"])   # -> ["b.jsonl.zst"]
"""

from __future__ import annotations

from collections.abc import Sequence


def unknown_arguments(args: Sequence[str]) -> list[str]:
    """The arguments in `args` (those lwm-pack left for Beam) that Beam does not know either."""
    if not any(a.startswith("-") for a in args):
        return list(args)  # stray words only: no need to import Beam to refuse them
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():
        seen.setdefault(str(cls), cls)
    for cls in seen.values():
        cls._add_argparse_args(parser)  # what PipelineOptions.get_all_options does
    _, rest = parser.parse_known_args(list(args))
    return rest


def error_message(unknown: Sequence[str]) -> str:
    """`unrecognized arguments: ...` with the hint an unquoted glob needs."""
    message = f"unrecognized arguments (neither lwm-pack nor Beam options): {' '.join(unknown)}"
    if any(not a.startswith("-") for a in unknown):
        message += ("; if the shell expanded a glob (e.g. --input books/*.jsonl.zst), quote it: "
                    "--input 'books/*.jsonl.zst', or give --input once per file")
    return message
