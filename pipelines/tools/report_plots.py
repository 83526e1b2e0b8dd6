"""The data and plots behind `lwm-pack report`: manifest readers and one PNG per section.

Every plot function takes (datasets, job manifest, context stages) and returns a `Plot` (PNG
bytes, alt text, notes), or a note-only `Plot` when its data is absent. Figures use matplotlib's
Agg canvas with a fixed style and no `Software` stamp, so the bytes are deterministic.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lwmkit.packing.manifest import load_manifest

REPORT_DIR = "report"
SEGMENT_SAMPLE_RECORDS = 5000  # shards are read only when a manifest lacks segments_per_record
SEGMENT_SAMPLE_TOKENS = 1 << 26  # ... and never more than this many tokens (64 records at 1M)
_TEXT, _VISION = "#4C72B0", "#DD8452"
_LINES = ("#C44E52", "#55A868", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
PLOT_STYLE = {
    "font.family": "DejaVu Sans", "font.size": 11, "axes.titlesize": 13, "axes.titleweight": "bold",
    "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.35,
    "axes.axisbelow": True, "figure.dpi": 100, "savefig.dpi": 100, "figure.facecolor": "white",
}


@dataclass(frozen=True)
class ReportDataset:
    name: str
    path: str
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "")


@dataclass(frozen=True)
class Plot:
    """A rendered section: a PNG (or None, with `note` saying why) and captions."""

    png: bytes | None
    alt: str
    note: str = ""
    details: str = ""  # trusted HTML (built here from escaped values)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt_int(value: Any) -> str:
    """A count with thousands separators; '–' when unknown."""
    if value is None:
        return "–"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3f}"
    return f"{int(value):,}"


def fmt_pct(fill: float | None, records: Any = None) -> str:
    """A fill as a percentage; "no records" when `records` is 0 (an empty dataset has no fill)."""
    if records == 0:
        return "no records"
    return "–" if fill is None else f"{100 * fill:.2f}%"


def by_seq_len(item: dict[str, Any]) -> tuple[bool, int]:
    """Sort key: no seq_len (documents) first, then seq_len as a number (32768 before 1048576)."""
    return item.get("seq_len") is not None, int(item.get("seq_len") or 0)


def _short(x: float, _pos: Any = None) -> str:
    for div, unit in ((1 << 20, "M"), (1 << 10, "K")):
        if x >= div and x % div == 0:
            return f"{int(x // div)}{unit}"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:g}{unit}"
    return f"{x:g}"


# --- data --------------------------------------------------------------------------------------


def read_datasets(directory: str, root: dict[str, Any]) -> list[ReportDataset]:
    if isinstance(root.get("datasets"), dict):  # JSON keys sort as strings: order by seq_len instead
        found = [ReportDataset(n, os.path.join(directory, n), load_manifest(os.path.join(directory, n))) for n in root["datasets"]]
        return sorted(found, key=lambda d: by_seq_len(d.manifest))
    return [ReportDataset(os.path.basename(os.path.normpath(directory)), directory, root)]


def context_stages(root: dict[str, Any]) -> list[dict[str, Any]]:
    # A "stages" job lists its progressive context stages; a dict-valued "stages" holds the
    # pipeline's per-stage counts instead (every manifest has those).
    for key in ("stages", "stages_schedule"):
        if isinstance(root.get(key), list):
            return sorted((s for s in root[key] if isinstance(s, dict)), key=by_seq_len)
    return []


def packed_datasets(datasets: Sequence[ReportDataset]) -> list[ReportDataset]:
    return [d for d in datasets if d.kind == "packed"]


def _document_lengths(datasets: Sequence[ReportDataset]) -> tuple[np.ndarray, str] | None:
    ordered = [d for d in datasets if d.kind == "document"] + packed_datasets(datasets)
    for d in ordered:  # the first that lists documents: an empty stage's table has no rows
        path = os.path.join(d.path, "documents.parquet")
        if os.path.exists(path):
            import pyarrow.parquet as pq

            tokens = np.asarray(pq.read_table(path, columns=["tokens"]).column("tokens").to_numpy())
            if len(tokens):
                return tokens, d.name
    return None


def _segment_counts(d: ReportDataset) -> tuple[dict[int, int], str]:
    """Records per segment count, and where they came from."""
    known = d.manifest.get("segments_per_record")
    if isinstance(known, dict):
        return {int(k): int(v) for k, v in known.items()}, f"all {fmt_int(d.manifest.get('records'))} records (manifest)"
    from lwmkit.packing.source import ShardDataSource

    src = ShardDataSource(d.path)
    limit = min(len(src), SEGMENT_SAMPLE_RECORDS, max(1, SEGMENT_SAMPLE_TOKENS // max(1, src.seq_len or 1)))
    counts: dict[int, int] = {}
    for start in range(0, limit, 256):
        for rec in src.__getitems__(range(start, min(limit, start + 256))):
            k = len(rec["segment_lengths"])
            counts[k] = counts.get(k, 0) + 1
    sample = f"all {fmt_int(limit)}" if limit == len(src) else f"the first {fmt_int(limit)} of {fmt_int(len(src))}"
    return counts, f"{sample} records (read from the shards)"


def _cuts(d: ReportDataset) -> tuple[dict[str, int], bool]:
    cuts = d.manifest.get("cuts")
    if isinstance(cuts, dict):
        zero = d.manifest.get("zero_loss") or {}
        return {**{k: int(v) for k, v in cuts.items()}, **{f"zero_loss_{k}": int(v) for k, v in zero.items()}}, True
    split = d.manifest.get("packing", {}).get("documents_split")
    return ({"documents_split": int(split)} if split is not None else {}), False


def _loss_mass(d: ReportDataset) -> tuple[dict[str, float], bool] | None:
    by = d.manifest.get("loss_weight_by_modality")
    if isinstance(by, dict):
        return {"text": float(by.get("text", 0.0)), "vision": float(by.get("vision", 0.0))}, True
    if d.manifest.get("loss_weight_sum") is not None:
        return {"text": float(d.manifest["loss_weight_sum"]), "vision": 0.0}, False
    return None


# --- plots -------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # Agg only: no display, no pyplot state
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _label_bars(ax, bars, labels: Sequence[str], horizontal: bool = False) -> None:
    ax.bar_label(bars, labels=list(labels), padding=3, fontsize=10)
    if horizontal:
        ax.set_xlim(0, ax.get_xlim()[1] * 1.18)  # room for the labels
    else:
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)


def plot_lengths(datasets, seq_lens) -> Plot:
    found = _document_lengths(datasets)
    if found is None or not len(found[0]):
        return Plot(None, "", "No documents.parquet with a tokens column: no document lengths to plot.")
    tokens, source = found
    from matplotlib.ticker import FuncFormatter, NullFormatter

    lo, hi = max(int(tokens.min()), 1), max(int(tokens.max()), 1)
    lo, hi = (lo / 1.5, hi * 1.5) if lo == hi else (lo, hi)
    fig = _figure(10, 4.4)
    ax = fig.add_subplot()
    ax.hist(np.maximum(tokens, 1), bins=np.geomspace(lo, hi, 31), color=_TEXT, edgecolor="white", linewidth=0.6)
    ax.set_xscale("log")
    for i, n in enumerate(sorted(set(seq_lens))):
        ax.axvline(n, color=_LINES[i % len(_LINES)], linestyle="--", linewidth=1.6, label=f"seq_len {n:,}")
    if seq_lens:
        ax.legend(loc="upper right", title="packed record length", frameon=False)
    ax.xaxis.set_major_formatter(FuncFormatter(_short))
    ax.xaxis.set_minor_formatter(NullFormatter())
    med = float(np.median(tokens))
    ax.set_title(f"Document length: {len(tokens):,} documents, median {med:,.0f} tokens")
    ax.set_xlabel("document length (tokens incl. BOS/EOS, log scale)")
    ax.set_ylabel("documents (count)")
    details = (f"From <code>{esc(source)}/documents.parquet</code>. Min {fmt_int(tokens.min())}, median "
               f"{fmt_int(round(med))}, max {fmt_int(tokens.max())}, total {fmt_int(tokens.sum())} tokens.")
    return Plot(_png(fig), "Histogram of document lengths in tokens", details=details)


def plot_fill(datasets, stages) -> Plot:
    if stages:
        items = [(f"stage {i + 1}\n{int(s['seq_len']):,}", s.get("fill"), s.get("records")) for i, s in enumerate(stages)]
        what, xlabel = "context stage", "context stage and seq_len (tokens per record)"
    else:
        items = [(f"{d.name}\n{int(d.manifest['seq_len']):,}", d.manifest.get("fill"), d.manifest.get("records"))
                 for d in packed_datasets(datasets)]
        what, xlabel = "packed dataset", "packed dataset and seq_len (tokens per record)"
    items = [(label, 0.0 if n == 0 else float(f), fmt_pct(f, n)) for label, f, n in items if f is not None or n == 0]
    if not items:
        return Plot(None, "", "No packed dataset or stage records a fill: nothing to plot.")
    fig = _figure(max(7.0, min(10.5, 2 + 1.4 * len(items))), 4.2)
    ax = fig.add_subplot()
    bars = ax.bar([x for x, _, _ in items], [100 * f for _, f, _ in items], color=_TEXT, width=0.6)
    _label_bars(ax, bars, [text for _, _, text in items])
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(f"Fill per {what}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fill (% of record tokens, not padding)")
    return Plot(_png(fig), f"Bar chart of fill per {what}")


def _hbars(title: str, xlabel: str, rows: list[tuple[str, float, float]], labels: list[str]) -> bytes:
    """Stacked horizontal text/vision bars, one row per dataset, each labelled at its end."""
    fig = _figure(10, 1.6 + 0.55 * len(rows))
    ax = fig.add_subplot()
    names = [r[0] for r in rows][::-1]
    text = np.array([r[1] for r in rows][::-1])
    vision = np.array([r[2] for r in rows][::-1])
    ax.barh(names, text, color=_TEXT, label="text", height=0.6)
    bars = ax.barh(names, vision, left=text, color=_VISION, label="vision" if vision.any() else None, height=0.6)
    _label_bars(ax, bars, labels[::-1], horizontal=True)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(_short))
    ax.grid(axis="y", visible=False)
    fig.legend(loc="outside upper right", ncols=2, frameon=False)
    fig.suptitle(title, fontsize=13, fontweight="bold")
    ax.set_xlabel(xlabel)
    return _png(fig)


def plot_modality(datasets) -> Plot:
    rows = [(d.name, float(d.manifest["tokens"].get("text", 0)), float(d.manifest["tokens"].get("vision", 0)))
            for d in datasets if isinstance(d.manifest.get("tokens"), dict)]
    if not rows:
        return Plot(None, "", "No dataset records its tokens by modality.")
    if not any(v for _, _, v in rows):
        return Plot(None, "", f"Text only: no dataset holds vision tokens ({fmt_int(rows[0][1])} text tokens in "
                               f"{esc(rows[0][0])}), so there is no modality mix to plot.")
    labels = [f"{fmt_int(t + v)}  ({100 * v / (t + v):.1f}% vision)" if t + v else "0" for _, t, v in rows]
    png = _hbars("Modality mix: tokens per dataset", "tokens (excluding padding)", rows, labels)
    details = "; ".join(f"{esc(n)}: {100 * v / (t + v):.2f}% vision" for n, t, v in rows if t + v)
    return Plot(png, "Stacked bars of text and vision tokens per dataset", details=details)


def plot_loss(datasets) -> Plot:
    found = [(d, _loss_mass(d)) for d in datasets]
    found = [(d, m) for d, m in found if m is not None]
    if not found:
        return Plot(None, "", "No dataset records loss weights (loss_weight_by_modality or loss_weight_sum).")
    rows = [(d.name, m["text"], m["vision"]) for d, (m, _) in found]
    totals = [float(fmt_tokens(d.manifest, "total") or 0) for d, _ in found]
    labels = [f"{fmt_int(t + v)}  ({100 * (t + v) / n:.2f}% of tokens)" if n else fmt_int(t + v)
              for (_, t, v), n in zip(rows, totals, strict=True)]
    png = _hbars("Loss-weight mass by modality", "loss-weight mass (sum of loss_weights, token-equivalents)",
                 rows, labels)
    fallback = [d.name for d, (_, exact) in found if not exact]
    note = ("" if not fallback else "No loss_weight_by_modality in " + ", ".join(esc(n) for n in fallback)
            + ": their loss_weight_sum is shown as text.")
    return Plot(png, "Stacked bars of loss-weight mass by modality per dataset", note=note)


def plot_segments(datasets) -> Plot:
    packed = packed_datasets(datasets)
    if not packed:
        return Plot(None, "", "No packed dataset: no segments per record to plot.")
    from matplotlib.ticker import MaxNLocator

    found: list[tuple[ReportDataset, dict[int, int], str]] = []
    problems = []
    for d in packed:
        try:
            found.append((d, *_segment_counts(d)))
        except Exception as e:  # a damaged shard must not cost the rest of the report
            problems.append(f"{esc(d.name)}: cannot read segments ({esc(e)})")
    found = [f for f in found if sum(f[1].values())]
    if not found:
        return Plot(None, "", "; ".join(problems) or "No packed records.")
    cols = min(3, len(found))
    rows = -(-len(found) // cols)
    fig = _figure(10 if cols > 1 else 8, 3.4 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    lines = []
    for ax, (d, counts, source) in zip(axes, found, strict=False):
        ks = np.array(sorted(counts))
        vs = np.array([counts[k] for k in ks], dtype=float)
        total = vs.sum()
        ax.bar(ks, 100 * vs / total, color=_TEXT, width=0.8 if len(ks) < 60 else 1.0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        ax.set_title(f"{d.name} (seq_len {int(d.manifest['seq_len']):,})", fontsize=11)
        ax.set_xlabel("segments per record")
        ax.set_ylabel("records (%)")
        mean = float((ks * vs).sum() / total)
        lines.append(f"{esc(d.name)}: mean {mean:.2f} segments per record, max {int(ks.max())}, from {esc(source)}")
    for ax in axes[len(found):]:
        ax.set_visible(False)
    fig.suptitle("Segments per packed record", fontsize=13, fontweight="bold")
    return Plot(_png(fig), "Histograms of segments per packed record", note="; ".join(problems),
                 details="<br>".join(lines))


_CUT_KEYS = ("documents_split", "documents_tail_kept", "documents_condition_repeated", "documents_truncated",
             "documents_dropped")
_CUT_COLUMNS = (*_CUT_KEYS, "frames_dropped", "condition_tokens_repeated", "tokens_dropped", "zero_loss_segments",
                "zero_loss_records")


def _cut_bars(left, cuts) -> None:
    names = [d.name for d, _, _ in cuts][::-1]
    y = np.arange(len(names))
    keys = [k for k in _CUT_KEYS if any(k in c for _, c, _ in cuts)]  # an old manifest knows only splits
    h = 0.8 / max(1, len(keys))
    for i, key in enumerate(keys):
        vals = [c.get(key) for _, c, _ in cuts][::-1]
        bars = left.barh(y + ((len(keys) - 1) / 2 - i) * h, [v or 0 for v in vals], height=h, color=_LINES[i],
                         label=key.replace("_", " "))
        left.bar_label(bars, labels=["n/a" if v is None else f"{v:,}" for v in vals], padding=2, fontsize=9)
    left.set_yticks(y, names)
    left.set_ylim(-0.7, len(names) - 0.3)
    left.set_xlim(0, max([1] + [c.get(k) or 0 for _, c, _ in cuts for k in keys]) * 1.2)
    if keys:  # below the axes, where no bar can be
        left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=len(keys), frameon=False, fontsize=9)
    left.set_title("Documents cut while packing")
    left.set_xlabel("documents (count)")


def plot_cuts(datasets, root) -> Plot:
    from matplotlib.ticker import MaxNLocator

    cuts = [(d, *_cuts(d)) for d in packed_datasets(datasets)]
    failures = dict(sorted((root.get("failures") or {}).get("by_reason", {}).items()))
    if not any(any(c.values()) for _, c, _ in cuts) and not failures:
        return Plot(None, "", "Nothing was cut and no input record was dropped.")
    fig = _figure(10.5 if cuts else 8, max(3.6, 1.6 + 0.5 * max(len(cuts), len(failures))))
    left, right = fig.subplots(1, 2, width_ratios=(1.1, 1)) if cuts else (None, fig.add_subplot())
    if cuts:
        _cut_bars(left, cuts)
    if failures:
        bars = right.barh(list(failures)[::-1], list(failures.values())[::-1], color=_LINES[5], height=0.5)
        _label_bars(right, bars, [f"{v:,}" for v in list(failures.values())[::-1]], horizontal=True)
        right.set_ylim(-0.7, len(failures) - 0.3)
    else:
        right.text(0.5, 0.5, "no input record was dropped", ha="center", va="center", transform=right.transAxes)
        right.set_yticks([])
    for ax in (left, right):
        if ax is not None:
            ax.grid(axis="y", visible=False)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_title("Dropped input records")
    right.set_xlabel("records (count)")
    right.set_ylabel("stage:reason")
    head = "<tr><th>dataset</th>" + "".join(f"<th>{esc(k.replace('_', ' '))}</th>" for k in _CUT_COLUMNS) + "</tr>"
    body = "".join(
        f"<tr><td>{esc(d.name)}{'' if exact else ' (from packing.documents_split)'}</td>"
        + "".join(f"<td class=num>{fmt_int(c.get(k))}</td>" for k in _CUT_COLUMNS) + "</tr>"
        for d, c, exact in cuts
    )
    failures_file = (root.get("failures") or {}).get("file")
    note = f"Each dropped record is listed with its reason in <code>{esc(failures_file)}</code>." if failures_file else ""
    reasons = "<table><tr><th>stage:reason</th><th>dropped records</th></tr>" + "".join(
        f"<tr><td>{esc(k)}</td><td class=num>{fmt_int(v)}</td></tr>" for k, v in failures.items()) + "</table>" if failures else ""
    return Plot(_png(fig), "Bar charts of documents cut per dataset and dropped records by reason",
                 note=note, details=(f"<table>{head}{body}</table>" if cuts else "") + reasons)


def fmt_tokens(m: dict[str, Any], key: str) -> Any:
    return m["tokens"].get(key) if isinstance(m.get("tokens"), dict) else None
