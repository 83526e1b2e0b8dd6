"""What a training run tells a person: a progress line, a metrics JSONL file and a loss plot (PNG).

Every step appends one JSON line to `<output>/metrics.jsonl`:
    {"stage": "tiny-512", "stage_index": 0, "step": 12, "global_step": 12, "seq_len": 512,
     "loss": 4.81, "text_loss": 4.81, "text_accuracy": 0.21, "lr": 0.0098, "grad_norm": 0.61,
     "tokens_per_s": 21034.5, "padding": 0.004, "step_s": 0.19, "cpu_s": 0.35, "mfu": null, ...}
A resumed run appends again from its checkpoint's step; readers keep the last line of each
(stage, step). Every `log_every` steps a line goes to stderr:
    [tiny-512] step 12/40 | loss 4.810 (text 4.810) | lr 9.8e-03 | 21.0k tok/s | pad 0.4% | 0.19 s/step | eta 5s
At the end `loss.png` plots the loss (and per-modality losses) over all stages' steps, with a line
where each stage starts.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from lwmkit.packing.json_input import parse_json


class MetricsLog:
    """Appends step records to a JSONL file (flushed per line, so a preempted run loses nothing)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(_plain(record), sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _plain(record: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in record.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = str(v)  # JSON has no NaN; keep the fact visible
        out[k] = v
    return out


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics file, the last one of each (stage, step), in (stage, step) order.

    Raises:
      ValueError: naming the file and line for a line that is not a JSON object.
    """
    latest: dict[tuple[int, int], dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = parse_json(line, "JSON", ValueError, dict)  # never RecursionError
                key = (int(rec["stage_index"]), int(rec["step"]))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}: line {n}: not a metrics record: {e}") from e
            latest[key] = rec
    return [latest[k] for k in sorted(latest)]


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(record: Mapping[str, Any], steps: int) -> str:
    """One human line for a step record of a stage of `steps` steps."""
    parts = [f"loss {record['loss']:.3f}"]
    split = [f"{m} {record[f'{m}_loss']:.3f}" for m in ("text", "vision")
             if record.get(f"{m}_weight") and record.get(f"{m}_loss") is not None]
    if split:
        parts[0] += f" ({', '.join(split)})"
    line = [f"[{record['stage']}] step {record['step']}/{steps}", parts[0], f"lr {record['lr']:.1e}",
            f"{_si(record['tokens_per_s'])} tok/s", f"pad {100 * record['padding']:.1f}%"]
    if record.get("mfu") is not None:
        line.append(f"mfu {100 * record['mfu']:.1f}%")
    line.append(f"{record['step_s']:.2f} s/step")
    line.append(f"eta {_duration(record['step_s'] * (steps - record['step']))}")
    return " | ".join(line)


def print_progress(record: Mapping[str, Any], steps: int, stream: TextIO | None = None) -> None:
    print(progress_line(record, steps), file=stream or sys.stderr, flush=True)


def plot_losses(records: Iterable[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Writes a PNG of loss over global step: total, text and vision losses, stage starts marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = list(records)
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = [r["global_step"] for r in records]
    ax.plot(x, [float(r["loss"]) for r in records], label="loss", color="black", linewidth=1.5)
    if any("vision_loss" in r for r in records):  # a vision model: the loss mixes two heads' losses
        for name, color in (("text", "tab:blue"), ("vision", "tab:orange")):
            points = [(r["global_step"], float(r[f"{name}_loss"])) for r in records if r.get(f"{name}_weight")]
            if points:
                ax.plot(*zip(*points, strict=True), label=f"{name} loss", color=color, linewidth=1)
    starts: dict[str, int] = {}
    for r in records:
        starts.setdefault(r["stage"], r["global_step"])
    for i, (stage, step) in enumerate(starts.items()):
        if i:
            ax.axvline(step - 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(stage, (step, 1.0), xycoords=("data", "axes fraction"), va="top", fontsize=8,
                    xytext=(3, -3), textcoords="offset points")
    ax.set_xlabel("step (all stages)")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
