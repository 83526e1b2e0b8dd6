"""The books job's options and the job record they make, without Beam: what `lwm-pack books`
needs to answer a rerun over a complete local output before Beam loads (`complete_books`).

`prepare_books` (job.py) builds its job record with the same `books_job`, so the quick answer and
the full launch compare the same identity with the output's manifest.

Example:
    options = BooksOptions(inputs=("books/*.jsonl",), output="out", tokenizer="tokenizer.model")
    complete_books(options)   # -> the job manifest if out/ is complete for them, else None
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lwmkit.pipelines.books.sources import input_kind
from lwmkit.pipelines.dedup.text import MinHashConfig
from lwmkit.pipelines.engine import runner as runner_lib
from lwmkit.pipelines.engine.inputs import local_inputs, read_tokenizer
from lwmkit.pipelines.engine.job_options import (
    DEFAULT_UNIT_BYTES,
    check_packing_fields,
    recorded_options,
)
from lwmkit.pipelines.engine.lifecycle import answer_complete, job_record, may_answer_complete
from lwmkit.pipelines.writing.plan import PackOptions

if TYPE_CHECKING:
    from lwmkit.pipelines.dedup.entry import NearDedupOptions

# The books job's named stages, in order (what the manifest's counts are shown by).
STAGES = ("read", "normalize", "filter", "tokenize", "dedup")


@dataclass(frozen=True, kw_only=True)
class DocumentOptions:
    """The fields of a job that reads raw book files (books, QA): which documents it keeps and
    whether it removes near-copies. The job's `__post_init__` calls the two checks where its
    messages come (`check_near_threshold` first).

    Attributes:
      text_key: JSON key / parquet column of the text.
      min_chars, max_chars: keep documents whose normalized length lies in [min_chars, max_chars].
      near_dedup: remove near-copies after exact dedup (MinHash LSH over word 5-grams; off by
        default, see docs/near-dedup.md); near_threshold: the estimated Jaccard similarity at or
        above which two documents are near-copies.
    """

    text_key: str = "text"
    min_chars: int = 1
    max_chars: int | None = None
    near_dedup: bool = False
    near_threshold: float = 0.8

    def check_near_threshold(self) -> None:
        if not 0.0 < self.near_threshold < 1.0:
            raise ValueError(f"near_threshold: {self.near_threshold} must be in (0, 1)")

    def check_char_range(self) -> None:
        if self.min_chars < 0:
            raise ValueError(f"min_chars: {self.min_chars} must be >= 0")
        if self.max_chars is not None and self.max_chars < max(self.min_chars, 1):
            raise ValueError(f"max_chars: {self.max_chars} must be >= min_chars ({self.min_chars}) and >= 1")


@dataclass(frozen=True)
class BooksOptions(DocumentOptions, runner_lib.ResumeOptions):
    """Options of the books job.

    Attributes:
      inputs: file globs (local or any Beam filesystem), `.jsonl.zst`, `.jsonl`, `.txt`, `.parquet`.
      output: output directory.
      tokenizer: path of a SentencePiece `.model` file.
      seq_lens: packed record lengths to produce, e.g. (32768, 131072).
      text_key, min_chars, max_chars, near_dedup, near_threshold: which documents are kept
        (`DocumentOptions`).
      shard_tokens: target tokens per shard file.
      pack: how documents are cut, packed and weighted (policy, positions, loss, window, seed).
      runner, direct_running_mode, direct_num_workers, progress, beam_args, force,
        retry_failures, keep_work: how the job runs (`engine.runner.ResumeOptions`).
      unit_bytes: size of a work-store unit (memory per worker grows with it).
    """

    inputs: tuple[str, ...]
    output: str
    tokenizer: str
    seq_lens: tuple[int, ...] = (32768,)
    shard_tokens: int = 1 << 24
    pack: PackOptions = field(default_factory=PackOptions)
    unit_bytes: int = DEFAULT_UNIT_BYTES

    def __post_init__(self):
        self.check_near_threshold()
        if self.unit_bytes < 1:
            raise ValueError(f"unit_bytes: {self.unit_bytes} must be >= 1")
        if not self.inputs:
            raise ValueError("inputs: give at least one file or glob")
        check_packing_fields(self.seq_lens, self.shard_tokens)
        self.check_char_range()
        super().__post_init__()

    def recorded(self) -> dict[str, Any]:
        """The options as the manifest records them (everything that shapes the output)."""
        return recorded_options(self, not_recorded=("unit_bytes",))

    def near(self) -> NearDedupOptions | None:
        """The near-dedup stage's options, or None when it is off."""
        from lwmkit.pipelines.dedup.entry import NearDedupOptions  # Beam

        return NearDedupOptions("text", MinHashConfig(threshold=self.near_threshold)) if self.near_dedup else None


def books_job(options: BooksOptions, files: list[str], tokenizer) -> dict[str, Any]:
    """The job record of the books job (`lifecycle.job_record`): its recorded options, the matched
    `files`, the tokenizer's fingerprint and path, the runner."""
    return job_record(
        options.recorded(),
        files,
        {**tokenizer.fingerprint(), "path": options.tokenizer},
        runner_lib.describe(options.runner, options.direct_running_mode),
    )


def books_summary(files: list[str], tokenizer, job: dict[str, Any]) -> str:
    """The job's first progress line: inputs, tokenizer, runner."""
    return (f"{len(files)} input files; tokenizer {tokenizer.name} ({tokenizer.vocab_size} pieces); "
            f"runner {job['runner']}")


def complete_books(options: BooksOptions) -> dict[str, Any] | None:
    """The manifest of a complete local output for `options`, answered without Beam, or None.

    It matches the inputs as Beam would (`engine.inputs.local_inputs`), reads the tokenizer and
    asks `lifecycle.answer_complete` with the same job record `prepare_books` builds; None (run
    `run_books`, which checks again) for object-store paths, `[...]` globs, a missing input or
    tokenizer, or anything else it cannot be sure of.
    """
    if not may_answer_complete(options) or "://" in options.tokenizer:
        return None  # first: a first run lists no inputs and reads no tokenizer twice
    files = local_inputs(options.inputs, input_kind)
    if files is None:
        return None
    try:
        tokenizer = read_tokenizer(options.tokenizer)
    except (OSError, ValueError):
        return None
    job = books_job(options, files, tokenizer)
    return answer_complete(options, job, books_summary(files, tokenizer, job), STAGES)
