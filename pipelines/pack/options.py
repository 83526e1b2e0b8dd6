"""The stages job's options and the job record they make, without Beam: what `lwm-pack pack` needs
to answer a rerun over a complete local output before Beam loads (`complete_stages`).

`run_stages` (job.py) and `complete_stages` read the documents' manifest (`read_source`) and build
the job record (`stages_job`) with the same code, so the quick answer and the full run compare the
same identity with the output's manifest.

Example:
    options = StagesOptions(documents="out/documents", output="stages", schedule=parse_schedule("lwm-text"))
    complete_stages(options)   # -> the job manifest if stages/ is complete for them, else None
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lwmkit.packing.manifest import load_manifest
from lwmkit.pipelines.engine import runner as runner_lib
from lwmkit.pipelines.engine.lifecycle import answer_complete, job_record, may_answer_complete
from lwmkit.pipelines.engine.outputs import join
from lwmkit.pipelines.writing.plan import PackOptions

SCHEDULES = {
    "lwm-text": (32768, 131072, 262144, 524288, 1048576),
    "lwm-vision": (1024, 8192, 32768, 131072, 1048576),
}
# The job's one counted stage (then plan -> write shards -> finalize).
STAGES = ("read_documents",)


@dataclass(frozen=True)
class StagesOptions(runner_lib.RunOptions):
    """Options of the stages job.

    Attributes:
      documents: a document dataset directory (the books job's `documents/`).
      output: output directory for the stage datasets.
      schedule: the stages' seq_lens, e.g. (32768, 131072), or a name in SCHEDULES via `parse`.
      min_doc_tokens: per stage, pack only documents with at least this many tokens (default 0).
      shard_tokens, pack, runner, direct_running_mode, direct_num_workers, progress, beam_args,
      force: as for the books job.
    """

    documents: str
    output: str
    schedule: tuple[int, ...]
    min_doc_tokens: tuple[int, ...] = ()
    shard_tokens: int = 1 << 24
    pack: PackOptions = field(default_factory=PackOptions)

    def __post_init__(self):
        if not self.schedule:
            raise ValueError("schedule: give at least one stage length")
        if list(self.schedule) != sorted(set(self.schedule)):
            raise ValueError(f"schedule: {self.schedule} must rise strictly, like 32768,131072")
        for n in self.schedule:
            if not 2 <= n <= 1 << 24:
                raise ValueError(f"schedule: {n} is outside 2..{1 << 24}")
        if self.min_doc_tokens and len(self.min_doc_tokens) != len(self.schedule):
            raise ValueError(
                f"min_doc_tokens: {len(self.min_doc_tokens)} values for {len(self.schedule)} stages; give one per stage"
            )
        if any(m < 0 for m in self.min_doc_tokens):
            raise ValueError(f"min_doc_tokens: {self.min_doc_tokens} must be >= 0")
        super().__post_init__()

    def per_stage_minimum(self) -> dict[int, int]:
        return dict(zip(self.schedule, self.min_doc_tokens or [0] * len(self.schedule), strict=True))

    def recorded(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "schedule": list(self.schedule),
            "min_doc_tokens": list(self.min_doc_tokens),
            "shard_tokens": self.shard_tokens,
            "pack": self.pack.to_json(),
        }


def parse_schedule(text: str) -> tuple[int, ...]:
    """A schedule from a name in SCHEDULES or comma-separated lengths.

    Raises:
      ValueError: listing the named schedules when the text is neither.
    """
    if text in SCHEDULES:
        return SCHEDULES[text]
    try:
        return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise ValueError(f"schedule {text!r} is not a list of lengths nor one of {sorted(SCHEDULES)}") from e


def read_source(options: StagesOptions) -> tuple[dict[str, Any], list[str]]:
    """The documents directory's manifest and its shard paths.

    Raises:
      ManifestError: the documents directory has no readable manifest.
      ValueError: it does not hold document records.
    """
    source = load_manifest(options.documents)
    if source["kind"] != "document":
        raise ValueError(f"{options.documents}: holds {source['kind']} records; `pack` reads a documents/ directory")
    return source, [join(options.documents, s["file"]) for s in source["shards"]]


def stages_job(options: StagesOptions, source: dict[str, Any]) -> dict[str, Any]:
    """The job record of the stages job (`lifecycle.job_record`): its inputs are the source's shards
    by name and sha256, its tokenizer the one the documents were made with."""
    return job_record(
        options.recorded(),
        [s["file"] + ":" + s["sha256"] for s in source["shards"]],
        source.get("tokenizer"),
        runner_lib.describe(options.runner, options.direct_running_mode),
    )


def stages_summary(options: StagesOptions, source: dict[str, Any], shards: list[str]) -> str:
    """The job's first progress line: shards, documents, the schedule."""
    return f"{len(shards)} document shards, {source['documents']} documents; stages {list(options.schedule)}"


def complete_stages(options: StagesOptions) -> dict[str, Any] | None:
    """The manifest of a complete local output for `options`, answered without Beam, or None (run
    `run_stages`, which checks again): it reads the documents' manifest and asks
    `lifecycle.answer_complete` with the job record `run_stages` builds (`stages_job`)."""
    if not may_answer_complete(options):
        return None
    try:
        source, shards = read_source(options)
    except (OSError, ValueError):
        return None
    job = stages_job(options, source)
    return answer_complete(options, job, stages_summary(options, source, shards), STAGES, closing=lambda manifest: ())
