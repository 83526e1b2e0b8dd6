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
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from lwmkit.packing.manifest import load_manifest
from lwmkit.packing.shards import write_bytes_atomic
from lwmkit.pipelines.tools.report_dedup import TITLE as NEAR_TITLE
from lwmkit.pipelines.tools.report_dedup import plot_near_duplicates
from lwmkit.pipelines.tools.report_plots import (
    PLOT_STYLE,
    REPORT_DIR,
    Plot,
    ReportDataset,
    context_stages,
    esc,
    fmt_int,
    fmt_pct,
    fmt_tokens,
    packed_datasets,
    plot_cuts,
    plot_fill,
    plot_lengths,
    plot_loss,
    plot_modality,
    plot_segments,
    read_datasets,
)

# --- page --------------------------------------------------------------------------------------


_CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;font-size:15px;color:#222;max-width:1100px;margin:24px auto;padding:0 16px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;margin-top:34px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 14px}th,td{border:1px solid #ddd;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f4f4f4;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
td table{margin:0}code{font-family:"DejaVu Sans Mono",Menlo,monospace;font-size:13px;overflow-wrap:anywhere}
img{max-width:100%;height:auto;display:block;margin:8px 0}.note{color:#555;font-style:italic}.sub{color:#666}
.warning{color:#a40000;font-weight:bold}
"""


def _kv(rows: Sequence[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _stage_cell(key: str, value: Any, stage: dict[str, Any]) -> str:
    """One cell of the stage table; a dict (e.g. tokens by modality) becomes one "key value" line each."""
    if key == "fill":
        return fmt_pct(value, stage.get("records"))
    if isinstance(value, dict):
        return "<br>".join(f"{esc(k)} {_stage_cell(k, v, stage)}" for k, v in value.items())
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return fmt_int(value)
    return esc(value)


def _warnings(root: dict[str, Any], datasets: Sequence[ReportDataset]) -> str:
    """Every warning the manifests record (e.g. a randomly initialised VQGAN), each once."""
    found = [str(w) for m in [root, *(d.manifest for d in datasets)] for w in m.get("warnings") or []]
    return "<br>".join(f"<span class=warning>{esc(w)}</span>" for w in dict.fromkeys(found)) or "none"


def _summary(directory: str, root: dict[str, Any], datasets: Sequence[ReportDataset], stages) -> str:
    head = ("<tr><th>dataset</th><th>kind</th><th>seq_len</th><th>documents</th><th>tokens</th>"
            "<th>vision tokens</th><th>records</th><th>fill</th><th>segments</th></tr>")
    body = "".join(
        f'<tr data-dataset="{esc(d.name)}"><td>{esc(d.name)}</td><td>{esc(d.kind)}</td>'
        f"<td class=num>{fmt_int(m.get('seq_len'))}</td><td class=num>{fmt_int(m.get('documents'))}</td>"
        f"<td class=num>{fmt_int(fmt_tokens(m, 'total'))}</td><td class=num>{fmt_int(fmt_tokens(m, 'vision'))}</td>"
        f"<td class=num>{fmt_int(m.get('records'))}</td><td class=num>{fmt_pct(m.get('fill'), m.get('records'))}</td>"
        f"<td class=num>{fmt_int(m.get('segments'))}</td></tr>"
        for d in datasets for m in [d.manifest]
    )
    out = f"<table class=datasets>{head}{body}</table>"
    if stages:
        keys = ("seq_len", "records", "tokens", "fill", "rope_theta", "documents_long_enough", "min_doc_tokens")
        out += "<h3>Context stages</h3><table class=stages><tr><th>stage</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"
        out += "".join(
            f"<tr><td>{i + 1}</td>" + "".join(f"<td class=num>{_stage_cell(k, s.get(k), s)}</td>" for k in keys) + "</tr>"
            for i, s in enumerate(stages)
        )
        out += "</table>"
    tok = root.get("tokenizer") or {}
    tok_text = ", ".join(f"{k} {tok[k]}" for k in ("type", "vocab_size", "bos_id", "eos_id", "unk_id", "pad_id") if k in tok)
    files = root.get("input_files") or []
    shown = "<br>".join(f"<code>{esc(f)}</code>" for f in files[:20]) + (f"<br>… and {len(files) - 20:,} more" if len(files) > 20 else "")
    failures = root.get("failures") or {}
    rows = [
        ("warnings", _warnings(root, datasets)),
        ("directory", f"<code>{esc(os.path.abspath(directory))}</code>"),
        ("kind", esc(root.get("kind", "–"))),
        ("documents", fmt_int(root.get("documents"))),
        ("generated at", esc((root.get("timestamps") or {}).get("finished_at", "–")) + " <span class=sub>(job finished)</span>"),
        ("runner", esc(root.get("runner", "–"))),
        ("lwmkit version", esc(root.get("lwmkit_version", "–"))),
        ("tokenizer", f"{esc(tok_text) or '–'}<br>sha256 <code>{esc(tok.get('sha256', '–'))}</code><br>"
                      f"path <code>{esc(tok.get('path', '–'))}</code>"),
        ("input files", f"{len(files):,}<br>{shown}" if files else "–"),
        ("dropped input records", fmt_int(failures.get("total", 0))),
        ("options", _kv([(k, f"<code>{esc(json.dumps(v, sort_keys=True, ensure_ascii=False))}</code>")
                         for k, v in sorted((root.get("options") or {}).items())])),
    ]
    return out + _kv(rows)


def _section(title: str, plot: Plot) -> str:
    parts = [f"<section><h2>{esc(title)}</h2>"]
    if plot.png is None:
        parts.append(f'<p class="note skipped">{plot.note}</p>')
    else:
        data = base64.b64encode(plot.png).decode("ascii")
        parts.append(f'<img alt="{esc(plot.alt)}" src="data:image/png;base64,{data}">')
        if plot.note:
            parts.append(f'<p class="note">{plot.note}</p>')
    if plot.details:
        parts.append(f'<div class="sub">{plot.details}</div>')
    return "".join(parts) + "</section>\n"


def _seq_lens(datasets: Sequence[ReportDataset], stages: Sequence[dict[str, Any]]) -> list[int]:
    return [int(d.manifest["seq_len"]) for d in packed_datasets(datasets)] or [int(s["seq_len"]) for s in stages]


SECTIONS: tuple[tuple[str, Callable[..., Plot]], ...] = (
    ("Document length", lambda ds, root, st: plot_lengths(ds, _seq_lens(ds, st))),
    ("Fill", lambda ds, root, st: plot_fill(ds, st)),
    ("Modality mix", lambda ds, root, st: plot_modality(ds)),
    ("Loss-weight mass by modality", lambda ds, root, st: plot_loss(ds)),
    ("Segments per record", lambda ds, root, st: plot_segments(ds)),
    ("Cuts and failures", lambda ds, root, st: plot_cuts(ds, root)),
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
    datasets = read_datasets(directory, root)
    stages = context_stages(root)
    with matplotlib.style.context(["default", PLOT_STYLE]):
        sections = "".join(_section(title, fn(datasets, root, stages)) for title, fn in SECTIONS)
        if "near_dedup" in root:  # the job ran with --near-dedup
            sections += _section(NEAR_TITLE, plot_near_duplicates(root))
    name = os.path.basename(os.path.normpath(os.path.abspath(directory)))
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>lwmkit corpus report: {esc(name)}</title>'
        f"<style>{_CSS}</style></head><body>\n<h1>lwmkit corpus report: {esc(name)}</h1>\n"
        f"<section><h2>Summary</h2>{_summary(directory, root, datasets, stages)}</section>\n{sections}</body></html>\n"
    )
    path = os.path.join(output if output is not None else os.path.join(directory, REPORT_DIR), "index.html")
    write_bytes_atomic(path, page.encode("utf-8"))
    return path
