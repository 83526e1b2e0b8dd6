"""Result plots (matplotlib, Agg backend, PNG): the needle heatmap and a multi-task summary.

`heatmap` draws one task as the familiar grid: context length on x, needle depth on y (0% at the
top), each cell the mean score from red (0) through yellow to green (1), the colours of
gkamradt's and LWM's plots. `summary_plot` draws mean score against context length, one line per
task.

Example:
    >>> heatmap(read_results("results.jsonl"), "needle_heatmap.png", task="lwm_single")
    'needle_heatmap.png'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from lwmkit.eval.evaluate import cell_scores, summarize

RED_YELLOW_GREEN = ("#F0496E", "#EBB839", "#0CD79F")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def length_label(n: int) -> str:
    """The length as asked for, shortened: decimal multiples first (128000 -> "128K", 512000 -> "512K",
    1000000 -> "1M"), then binary ones (131072 -> "128K", 1048576 -> "1M", 4096 -> "4K"); any other
    length is printed in full (1400 -> "1400", 100001 -> "100001"), never rounded to another number."""
    for unit, suffix in ((1_000_000, "M"), (1 << 20, "M"), (1000, "K"), (1 << 10, "K")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def score_grid(rows: Sequence[dict[str, Any]], task: str) -> tuple[list[int], list[float], np.ndarray]:
    """(lengths, depths, scores [depths, lengths] with NaN for empty cells) of one task."""
    cells = cell_scores(rows, task)
    if not cells:
        raise ValueError(f"no results for task {task!r}")
    lengths = sorted({k[0] for k in cells})
    depths = sorted({k[1] for k in cells})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for (n, d), (s, _) in cells.items():
        grid[depths.index(d), lengths.index(n)] = s
    return lengths, depths, grid


def heatmap(rows: Sequence[dict[str, Any]], path: str, task: str | None = None, title: str | None = None) -> str:
    """Writes the length x depth heatmap of one task (default: the only task in `rows`) to `path`.

    Raises:
      ValueError: if `task` is None and rows hold several tasks, or the task has no rows.
    """
    from matplotlib.colors import LinearSegmentedColormap

    tasks = sorted({r["task"] for r in rows})
    if task is None:
        if len(tasks) != 1:
            raise ValueError(f"rows hold tasks {tasks}; name one")
        task = tasks[0]
    lengths, depths, grid = score_grid(rows, task)
    plt = _pyplot()
    cmap = LinearSegmentedColormap.from_list("needle", list(RED_YELLOW_GREEN))
    cmap = cmap.with_extremes(bad="#DDDDDD")
    width = max(6.0, 0.55 * len(lengths) + 2.5)
    height = max(3.5, 0.32 * len(depths) + 1.8)
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths], rotation=45, ha="right")
    step = max(1, len(depths) // 12)
    ax.set_yticks(range(0, len(depths), step), [f"{d:g}" for d in depths[::step]])
    ax.set_xlabel("Context length (tokens)")
    ax.set_ylabel("Depth percent")
    ax.set_xticks(np.arange(-0.5, len(lengths)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(depths)), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    mean = float(np.nanmean(grid))
    ax.set_title(title or f"Needle in a haystack: {task} (mean score {mean:.2f})")
    fig.colorbar(im, ax=ax, label="Score")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def summary_plot(
    rows: Sequence[dict[str, Any]], path: str, title: str = "Needle tasks: score by context length"
) -> str:
    """Writes mean score against context length, one line per task, to `path`."""
    summary = summarize(rows)
    if not summary:
        raise ValueError("no results to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for task, s in summary.items():
        lengths = [int(n) for n in s["by_length"]]
        ax.plot(lengths, list(s["by_length"].values()), marker="o", label=f"{task} ({s['score']:.2f})")
    ax.set_xscale("log")
    all_lengths = sorted({int(n) for s in summary.values() for n in s["by_length"]})
    ax.set_xticks(all_lengths, [length_label(n) for n in all_lengths])
    ax.minorticks_off()
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("Context length (tokens)")
    ax.set_ylabel("Mean score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
