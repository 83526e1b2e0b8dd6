"""Running cases against a backend: concurrency, resume, per-case timing, scores and summaries.

Results are one JSONL row per case, appended as each answer arrives, so an interrupted run resumes
where it stopped: rows that hold an answer are kept, rows with an error are tried again. A results
file made from other cases (same id, another prompt SHA-256) is refused rather than mixed.

Example:
    >>> rows = evaluate(read_cases("cases.jsonl"), OpenAIBackend(url, "m"), "results.jsonl", concurrency=8)
    >>> print(format_table(rows))            # per task: depth rows x length columns, mean score
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from lwmkit.eval.backends import Backend, BackendError, Prompt
from lwmkit.eval.cases import CaseError, case_prompt
from lwmkit.eval.jsonl import parse_line
from lwmkit.eval.scoring import score

ROW_FIELDS = (
    "id", "task", "modality", "length", "depth", "true_depth", "round", "prompt_tokens", "expected", "scoring",
)  # fmt: skip


def read_results(path: str) -> list[dict[str, Any]]:
    """Rows of a results JSONL file ([] if it does not exist); a torn last line is ignored.

    Raises:
      CaseError: naming the file and line of a row that is not JSON (other than the last).
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        raise CaseError(f"{path}: cannot read results: {e}") from e
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = parse_line(line, f"{path}:{i}", CaseError)
        except CaseError:
            if i == len(lines) or i == len(lines) - 1 and not lines[-1]:
                break  # interrupted mid-write
            raise
        if not isinstance(row, dict):
            raise CaseError(f"{path}:{i}: not a JSON object (got {type(row).__name__})")
        rows.append(row)
    return rows


def case_request(case: dict[str, Any], tokenizer: Any = None) -> Prompt:
    """The prompt a backend gets for a case: text, or token ids for a video case."""
    if case.get("modality", "text") == "video":
        from lwmkit.eval.video_needle import video_prompt

        return video_prompt(case)
    return case_prompt(case, tokenizer)


def _run_one(case: dict[str, Any], backend: Backend, tokenizer: Any, max_new_tokens: int | None) -> dict[str, Any]:
    row: dict[str, Any] = {k: case.get(k) for k in ROW_FIELDS}
    row.update(backend=backend.name, prompt_sha256=case.get("prompt_sha256"), answer=None, score=None, error=None)
    t0 = time.perf_counter()
    try:
        prompt = case_request(case, tokenizer)
        budget = max_new_tokens or int(case["answer_tokens"])
        row["answer"] = backend.generate(prompt, budget, bos=bool(case.get("bos", True)))
        row["score"] = score(case["scoring"], row["answer"], case["expected"])
    except (BackendError, CaseError, ValueError) as e:
        row["error"] = f"{type(e).__name__}: {e}"
    row["seconds"] = round(time.perf_counter() - t0, 4)
    return row


def evaluate(
    cases: Sequence[dict[str, Any]],
    backend: Backend,
    results_path: str,
    *,
    concurrency: int = 4,
    resume: bool = True,
    tokenizer: Any = None,
    max_new_tokens: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Answers and scores every case not yet answered in `results_path`.

    Args:
      cases: needle cases (`read_cases`).
      backend: the model.
      results_path: JSONL results, appended to as answers arrive.
      concurrency: prompts in flight at once (capped by `backend.max_concurrency`).
      resume: keep the answered rows already in `results_path`; False starts the file afresh.
      tokenizer: rebuilds prompts of cases stored without them from document-shard haystacks.
      max_new_tokens: tokens to generate (default: each case's `answer_tokens`).
      progress: called with each new row.

    Returns:
      One row per case, in the order of `cases` (rows of earlier runs included).

    Raises:
      CaseError: if `results_path` holds a row for a case id whose prompt differs.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    by_id = {c["id"]: c for c in cases}
    done: dict[str, dict[str, Any]] = {}
    others: list[dict[str, Any]] = []  # rows of cases not in this run: kept as they are
    if resume:
        for row in read_results(results_path):
            case = by_id.get(row.get("id"))
            if case is None:
                others.append(row)
                continue
            if row.get("error"):
                continue
            if row.get("prompt_sha256") != case.get("prompt_sha256"):
                raise CaseError(
                    f"{results_path}: case {row['id']} was answered for another prompt; use a new results file"
                )
            done[row["id"]] = row
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    if not resume or not os.path.exists(results_path):
        open(results_path, "w").close()
    else:
        _rewrite(results_path, [*others, *done.values()])
    todo = [c for c in cases if c["id"] not in done]
    workers = max(1, min(concurrency, getattr(backend, "max_concurrency", concurrency), len(todo) or 1))
    with open(results_path, "a", encoding="utf-8") as out, ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_run_one, c, backend, tokenizer, max_new_tokens) for c in todo]
        for fut in as_completed(futures):
            row = fut.result()
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            done[row["id"]] = row
            if progress:
                progress(row)
    return [done[c["id"]] for c in cases if c["id"] in done]


def _rewrite(path: str, keep: list[dict[str, Any]]) -> None:
    """Rewrites the results file with the rows kept (drops retried errors and torn lines), atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in keep:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def cell_scores(rows: Sequence[dict[str, Any]], task: str) -> dict[tuple[int, float], tuple[float, int]]:
    """(length, depth) -> (mean score, cases) for one task; rows with an error count as 0."""
    acc: dict[tuple[int, float], list[float]] = defaultdict(list)
    for r in rows:
        if r["task"] == task:
            acc[(int(r["length"]), float(r["depth"]))].append(float(r["score"] or 0.0))
    return {k: (sum(v) / len(v), len(v)) for k, v in sorted(acc.items())}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per task: mean score, case and error counts, mean seconds, and mean score per length."""
    out: dict[str, Any] = {}
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        by_len: dict[int, list[float]] = defaultdict(list)
        for r in mine:
            by_len[int(r["length"])].append(float(r["score"] or 0.0))
        out[task] = {
            "score": sum(float(r["score"] or 0.0) for r in mine) / len(mine),
            "cases": len(mine),
            "errors": sum(1 for r in mine if r.get("error")),
            "mean_seconds": sum(float(r.get("seconds") or 0.0) for r in mine) / len(mine),
            "by_length": {str(k): sum(v) / len(v) for k, v in sorted(by_len.items())},
        }
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table per task: depth (rows) x length (columns), mean scores, then the task mean."""
    blocks = []
    for task, s in summarize(rows).items():
        cells = cell_scores(rows, task)
        lengths = sorted({k[0] for k in cells})
        depths = sorted({k[1] for k in cells})
        head = f"{'depth %':>8} | " + " ".join(f"{n:>8}" for n in lengths)
        lines = [f"{task}: mean {s['score']:.3f} over {s['cases']} cases ({s['errors']} errors)", head, "-" * len(head)]
        for d in depths:
            vals = [f"{cells[(n, d)][0]:>8.2f}" if (n, d) in cells else f"{'':>8}" for n in lengths]
            lines.append(f"{d:>8g} | " + " ".join(vals))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
