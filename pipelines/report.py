"""`lwm-pack report DIR`: one self-contained HTML page that describes a corpus output.

Reads only what a job wrote (manifests, `documents.parquet` and, when a manifest predates a key,
the first records of the shards) and writes `<DIR>/report/index.html`: a summary table, then one
plot per section with its PNG inlined as base64, so the single file can be mailed or attached.
A section whose data is absent (no packed dataset, no vision tokens, nothing cut) shows a short
note instead of a plot. Plots use matplotlib's Agg canvas with a fixed style and no PNG
`Software` stamp, so the same output directory always gives a byte-identical page.

Example:
    >>> write_report("out/")            # out/manifest.json is a "job" or "stages" manifest
    'out/report/index.html'
    >>> write_report("out/packed-32768", "/tmp/r")   # or one dataset directory
    '/tmp/r/index.html'
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from lwmkit.packing.manifest import load_manifest
from lwmkit.packing.shards import write_bytes_atomic

REPORT_DIR = "report"
SEGMENT_SAMPLE_RECORDS = 5000  # shards are read only when a manifest lacks segments_per_record
SEGMENT_SAMPLE_TOKENS = 1 << 26  # ... and never more than this many tokens (64 records at 1M)
_TEXT, _VISION = "#4C72B0", "#DD8452"
_LINES = ("#C44E52", "#55A868", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
_STYLE = {
    "font.family": "DejaVu Sans", "font.size": 11, "axes.titlesize": 13, "axes.titleweight": "bold",
    "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.35,
    "axes.axisbelow": True, "figure.dpi": 100, "savefig.dpi": 100, "figure.facecolor": "white",
}


@dataclass(frozen=True)
class _Dataset:
    name: str
    path: str
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "")


@dataclass(frozen=True)
class _Plot:
    """A rendered section: a PNG (or None, with `note` saying why) and captions."""

    png: bytes | None
    alt: str
    note: str = ""
    details: str = ""  # trusted HTML (built here from escaped values)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _n(value: Any) -> str:
    """A count with thousands separators; '–' when unknown."""
    if value is None:
        return "–"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3f}"
    return f"{int(value):,}"


def _pct(fill: float | None) -> str:
    return "–" if fill is None else f"{100 * fill:.2f}%"


def _short(x: float, _pos: Any = None) -> str:
    for div, unit in ((1 << 20, "M"), (1 << 10, "K")):
        if x >= div and x % div == 0:
            return f"{int(x // div)}{unit}"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:g}{unit}"
    return f"{x:g}"


# --- data --------------------------------------------------------------------------------------


def _datasets(directory: str, root: dict[str, Any]) -> list[_Dataset]:
    if isinstance(root.get("datasets"), dict):
        return [_Dataset(n, os.path.join(directory, n), load_manifest(os.path.join(directory, n))) for n in root["datasets"]]
    return [_Dataset(os.path.basename(os.path.normpath(directory)), directory, root)]


def _context_stages(root: dict[str, Any]) -> list[dict[str, Any]]:
    # A "stages" job lists its progressive context stages; a dict-valued "stages" holds the
    # pipeline's per-stage counts instead (every manifest has those).
    for key in ("stages", "stages_schedule"):
        if isinstance(root.get(key), list):
            return [s for s in root[key] if isinstance(s, dict)]
    return []


def _packed(datasets: Sequence[_Dataset]) -> list[_Dataset]:
    return [d for d in datasets if d.kind == "packed"]


def _document_lengths(datasets: Sequence[_Dataset]) -> tuple[np.ndarray, str] | None:
    ordered = [d for d in datasets if d.kind == "document"] + _packed(datasets)
    for d in ordered:
        path = os.path.join(d.path, "documents.parquet")
        if os.path.exists(path):
            import pyarrow.parquet as pq

            return np.asarray(pq.read_table(path, columns=["tokens"]).column("tokens").to_numpy()), d.name
    return None


def _segment_counts(d: _Dataset) -> tuple[dict[int, int], str]:
    """Records per segment count, and where they came from."""
    known = d.manifest.get("segments_per_record")
    if isinstance(known, dict):
        return {int(k): int(v) for k, v in known.items()}, f"all {_n(d.manifest.get('records'))} records (manifest)"
    from lwmkit.packing.source import ShardDataSource

    src = ShardDataSource(d.path)
    limit = min(len(src), SEGMENT_SAMPLE_RECORDS, max(1, SEGMENT_SAMPLE_TOKENS // max(1, src.seq_len or 1)))
    counts: dict[int, int] = {}
    for start in range(0, limit, 256):
        for rec in src.__getitems__(range(start, min(limit, start + 256))):
            k = len(rec["segment_lengths"])
            counts[k] = counts.get(k, 0) + 1
    sample = f"all {_n(limit)}" if limit == len(src) else f"the first {_n(limit)} of {_n(len(src))}"
    return counts, f"{sample} records (read from the shards)"


def _cuts(d: _Dataset) -> tuple[dict[str, int], bool]:
    cuts = d.manifest.get("cuts")
    if isinstance(cuts, dict):
        return {k: int(v) for k, v in cuts.items()}, True
    split = d.manifest.get("packing", {}).get("documents_split")
    return ({"documents_split": int(split)} if split is not None else {}), False


def _loss_mass(d: _Dataset) -> tuple[dict[str, float], bool] | None:
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


def _plot_lengths(datasets, seq_lens) -> _Plot:
    found = _document_lengths(datasets)
    if found is None or not len(found[0]):
        return _Plot(None, "", "No documents.parquet with a tokens column: no document lengths to plot.")
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
    details = (f"From <code>{_e(source)}/documents.parquet</code>. Min {_n(tokens.min())}, median "
               f"{_n(round(med))}, max {_n(tokens.max())}, total {_n(tokens.sum())} tokens.")
    return _Plot(_png(fig), "Histogram of document lengths in tokens", details=details)


def _plot_fill(datasets, stages) -> _Plot:
    if stages:
        items = [(f"stage {i + 1}\n{int(s['seq_len']):,}", s.get("fill")) for i, s in enumerate(stages)]
        what, xlabel = "context stage", "context stage and seq_len (tokens per record)"
    else:
        items = [(f"{d.name}\n{int(d.manifest['seq_len']):,}", d.manifest.get("fill")) for d in _packed(datasets)]
        what, xlabel = "packed dataset", "packed dataset and seq_len (tokens per record)"
    items = [(label, float(f)) for label, f in items if f is not None]
    if not items:
        return _Plot(None, "", "No packed dataset or stage records a fill: nothing to plot.")
    fig = _figure(max(7.0, min(10.5, 2 + 1.4 * len(items))), 4.2)
    ax = fig.add_subplot()
    bars = ax.bar([x for x, _ in items], [100 * f for _, f in items], color=_TEXT, width=0.6)
    _label_bars(ax, bars, [f"{100 * f:.2f}%" for _, f in items])
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(f"Fill per {what}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fill (% of record tokens, not padding)")
    return _Plot(_png(fig), f"Bar chart of fill per {what}")


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


def _plot_modality(datasets) -> _Plot:
    rows = [(d.name, float(d.manifest["tokens"].get("text", 0)), float(d.manifest["tokens"].get("vision", 0)))
            for d in datasets if isinstance(d.manifest.get("tokens"), dict)]
    if not rows:
        return _Plot(None, "", "No dataset records its tokens by modality.")
    if not any(v for _, _, v in rows):
        return _Plot(None, "", f"Text only: no dataset holds vision tokens ({_n(rows[0][1])} text tokens in "
                               f"{_e(rows[0][0])}), so there is no modality mix to plot.")
    labels = [f"{_n(t + v)}  ({100 * v / (t + v):.1f}% vision)" if t + v else "0" for _, t, v in rows]
    png = _hbars("Modality mix: tokens per dataset", "tokens (excluding padding)", rows, labels)
    details = "; ".join(f"{_e(n)}: {100 * v / (t + v):.2f}% vision" for n, t, v in rows if t + v)
    return _Plot(png, "Stacked bars of text and vision tokens per dataset", details=details)


def _plot_loss(datasets) -> _Plot:
    found = [(d, _loss_mass(d)) for d in datasets]
    found = [(d, m) for d, m in found if m is not None]
    if not found:
        return _Plot(None, "", "No dataset records loss weights (loss_weight_by_modality or loss_weight_sum).")
    rows = [(d.name, m["text"], m["vision"]) for d, (m, _) in found]
    totals = [float(_tokens(d.manifest, "total") or 0) for d, _ in found]
    labels = [f"{_n(t + v)}  ({100 * (t + v) / n:.2f}% of tokens)" if n else _n(t + v)
              for (_, t, v), n in zip(rows, totals, strict=True)]
    png = _hbars("Loss-weight mass by modality", "loss-weight mass (sum of loss_weights, token-equivalents)",
                 rows, labels)
    fallback = [d.name for d, (_, exact) in found if not exact]
    note = ("" if not fallback else "No loss_weight_by_modality in " + ", ".join(_e(n) for n in fallback)
            + ": their loss_weight_sum is shown as text.")
    return _Plot(png, "Stacked bars of loss-weight mass by modality per dataset", note=note)


def _plot_segments(datasets) -> _Plot:
    packed = _packed(datasets)
    if not packed:
        return _Plot(None, "", "No packed dataset: no segments per record to plot.")
    from matplotlib.ticker import MaxNLocator

    found: list[tuple[_Dataset, dict[int, int], str]] = []
    problems = []
    for d in packed:
        try:
            found.append((d, *_segment_counts(d)))
        except Exception as e:  # a damaged shard must not cost the rest of the report
            problems.append(f"{_e(d.name)}: cannot read segments ({_e(e)})")
    found = [f for f in found if sum(f[1].values())]
    if not found:
        return _Plot(None, "", "; ".join(problems) or "No packed records.")
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
        lines.append(f"{_e(d.name)}: mean {mean:.2f} segments per record, max {int(ks.max())}, from {_e(source)}")
    for ax in axes[len(found):]:
        ax.set_visible(False)
    fig.suptitle("Segments per packed record", fontsize=13, fontweight="bold")
    return _Plot(_png(fig), "Histograms of segments per packed record", note="; ".join(problems),
                 details="<br>".join(lines))


_CUT_KEYS = ("documents_split", "documents_truncated", "documents_dropped")


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


def _plot_cuts(datasets, root) -> _Plot:
    from matplotlib.ticker import MaxNLocator

    cuts = [(d, *_cuts(d)) for d in _packed(datasets)]
    failures = dict(sorted((root.get("failures") or {}).get("by_reason", {}).items()))
    if not any(any(c.values()) for _, c, _ in cuts) and not failures:
        return _Plot(None, "", "Nothing was cut and no input record was dropped.")
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
    head = "<tr><th>dataset</th>" + "".join(f"<th>{_e(k.replace('_', ' '))}</th>" for k in (*_CUT_KEYS, "tokens_dropped")) + "</tr>"
    body = "".join(
        f"<tr><td>{_e(d.name)}{'' if exact else ' (from packing.documents_split)'}</td>"
        + "".join(f"<td class=num>{_n(c.get(k))}</td>" for k in (*_CUT_KEYS, "tokens_dropped")) + "</tr>"
        for d, c, exact in cuts
    )
    failures_file = (root.get("failures") or {}).get("file")
    note = f"Each dropped record is listed with its reason in <code>{_e(failures_file)}</code>." if failures_file else ""
    reasons = "<table><tr><th>stage:reason</th><th>dropped records</th></tr>" + "".join(
        f"<tr><td>{_e(k)}</td><td class=num>{_n(v)}</td></tr>" for k, v in failures.items()) + "</table>" if failures else ""
    return _Plot(_png(fig), "Bar charts of documents cut per dataset and dropped records by reason",
                 note=note, details=(f"<table>{head}{body}</table>" if cuts else "") + reasons)


# --- page --------------------------------------------------------------------------------------


_CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;font-size:15px;color:#222;max-width:1100px;margin:24px auto;padding:0 16px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;margin-top:34px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 14px}th,td{border:1px solid #ddd;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f4f4f4;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
td table{margin:0}code{font-family:"DejaVu Sans Mono",Menlo,monospace;font-size:13px;overflow-wrap:anywhere}
img{max-width:100%;height:auto;display:block;margin:8px 0}.note{color:#555;font-style:italic}.sub{color:#666}
"""


def _kv(rows: Sequence[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _stage_cell(key: str, value: Any) -> str:
    if key == "fill":
        return _pct(value)
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return _n(value)
    return _e(value)


def _tokens(m: dict[str, Any], key: str) -> Any:
    return m["tokens"].get(key) if isinstance(m.get("tokens"), dict) else None


def _summary(directory: str, root: dict[str, Any], datasets: Sequence[_Dataset], stages) -> str:
    head = ("<tr><th>dataset</th><th>kind</th><th>seq_len</th><th>documents</th><th>tokens</th>"
            "<th>vision tokens</th><th>records</th><th>fill</th><th>segments</th></tr>")
    body = "".join(
        f'<tr data-dataset="{_e(d.name)}"><td>{_e(d.name)}</td><td>{_e(d.kind)}</td>'
        f"<td class=num>{_n(m.get('seq_len'))}</td><td class=num>{_n(m.get('documents'))}</td>"
        f"<td class=num>{_n(_tokens(m, 'total'))}</td><td class=num>{_n(_tokens(m, 'vision'))}</td>"
        f"<td class=num>{_n(m.get('records'))}</td><td class=num>{_pct(m.get('fill'))}</td>"
        f"<td class=num>{_n(m.get('segments'))}</td></tr>"
        for d in datasets for m in [d.manifest]
    )
    out = f"<table class=datasets>{head}{body}</table>"
    if stages:
        keys = ("seq_len", "records", "tokens", "fill", "rope_theta", "documents_long_enough", "min_doc_tokens")
        out += "<h3>Context stages</h3><table class=stages><tr><th>stage</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"
        out += "".join(
            f"<tr><td>{i + 1}</td>" + "".join(f"<td class=num>{_stage_cell(k, s.get(k))}</td>" for k in keys) + "</tr>"
            for i, s in enumerate(stages)
        )
        out += "</table>"
    tok = root.get("tokenizer") or {}
    tok_text = ", ".join(f"{k} {tok[k]}" for k in ("type", "vocab_size", "bos_id", "eos_id", "unk_id", "pad_id") if k in tok)
    files = root.get("input_files") or []
    shown = "<br>".join(f"<code>{_e(f)}</code>" for f in files[:20]) + (f"<br>… and {len(files) - 20:,} more" if len(files) > 20 else "")
    failures = root.get("failures") or {}
    rows = [
        ("directory", f"<code>{_e(os.path.abspath(directory))}</code>"),
        ("kind", _e(root.get("kind", "–"))),
        ("documents", _n(root.get("documents"))),
        ("generated at", _e((root.get("timestamps") or {}).get("finished_at", "–")) + " <span class=sub>(job finished)</span>"),
        ("runner", _e(root.get("runner", "–"))),
        ("lwmkit version", _e(root.get("lwmkit_version", "–"))),
        ("tokenizer", f"{_e(tok_text) or '–'}<br>sha256 <code>{_e(tok.get('sha256', '–'))}</code><br>"
                      f"path <code>{_e(tok.get('path', '–'))}</code>"),
        ("input files", f"{len(files):,}<br>{shown}" if files else "–"),
        ("dropped input records", _n(failures.get("total", 0))),
        ("options", _kv([(k, f"<code>{_e(json.dumps(v, sort_keys=True, ensure_ascii=False))}</code>")
                         for k, v in sorted((root.get("options") or {}).items())])),
    ]
    return out + _kv(rows)


def _section(title: str, plot: _Plot) -> str:
    parts = [f"<section><h2>{_e(title)}</h2>"]
    if plot.png is None:
        parts.append(f'<p class="note skipped">{plot.note}</p>')
    else:
        data = base64.b64encode(plot.png).decode("ascii")
        parts.append(f'<img alt="{_e(plot.alt)}" src="data:image/png;base64,{data}">')
        if plot.note:
            parts.append(f'<p class="note">{plot.note}</p>')
    if plot.details:
        parts.append(f'<div class="sub">{plot.details}</div>')
    return "".join(parts) + "</section>\n"


def _seq_lens(datasets: Sequence[_Dataset], stages: Sequence[dict[str, Any]]) -> list[int]:
    return [int(d.manifest["seq_len"]) for d in _packed(datasets)] or [int(s["seq_len"]) for s in stages]


SECTIONS: tuple[tuple[str, Callable[..., _Plot]], ...] = (
    ("Document length", lambda ds, root, st: _plot_lengths(ds, _seq_lens(ds, st))),
    ("Fill", lambda ds, root, st: _plot_fill(ds, st)),
    ("Modality mix", lambda ds, root, st: _plot_modality(ds)),
    ("Loss-weight mass by modality", lambda ds, root, st: _plot_loss(ds)),
    ("Segments per record", lambda ds, root, st: _plot_segments(ds)),
    ("Cuts and failures", lambda ds, root, st: _plot_cuts(ds, root)),
)


def write_report(directory: str, output: str | None = None) -> str:
    """Writes the corpus report of an output directory as one self-contained HTML file.

    Args:
      directory: a job output directory (manifest of kind "job" or "stages", with dataset
        subdirectories under "datasets") or a single dataset directory (local paths only).
      output: folder for `index.html`; default `<directory>/report`.

    Returns:
      The path of the written `index.html`.

    Raises:
      ManifestError: if `directory` or a dataset it lists has no readable manifest.
    """
    import matplotlib.style

    root = load_manifest(directory)
    datasets = _datasets(directory, root)
    stages = _context_stages(root)
    with matplotlib.style.context(["default", _STYLE]):
        sections = "".join(_section(title, fn(datasets, root, stages)) for title, fn in SECTIONS)
    name = os.path.basename(os.path.normpath(os.path.abspath(directory)))
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>lwmkit corpus report: {_e(name)}</title>'
        f"<style>{_CSS}</style></head><body>\n<h1>lwmkit corpus report: {_e(name)}</h1>\n"
        f"<section><h2>Summary</h2>{_summary(directory, root, datasets, stages)}</section>\n{sections}</body></html>\n"
    )
    path = os.path.join(output if output is not None else os.path.join(directory, REPORT_DIR), "index.html")
    write_bytes_atomic(path, page.encode("utf-8"))
    return path
