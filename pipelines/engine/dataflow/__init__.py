"""The offline Dataflow dry run: `--runner DataflowRunner --dry_run=True` builds and checks a job,
submitting nothing (`dry_run.py`), against the graph the DataflowRunner would send (`graph.py`).

The public names live here so jobs and commands import them from `engine.dataflow`.
"""

from lwmkit.pipelines.engine.dataflow.dry_run import (
    FINAL_STAGES,
    NOT_CHECKED,
    GraphReport,
    dry_run,
    dry_run_instead,
    dry_run_requested,
    option_warnings,
    register_dry_run,
)

__all__ = [
    "FINAL_STAGES",
    "NOT_CHECKED",
    "GraphReport",
    "dry_run",
    "dry_run_instead",
    "dry_run_requested",
    "option_warnings",
    "register_dry_run",
]
