"""The report's near-duplicates section: the similarity histogram of the removed documents and the
cluster sizes, from the job manifest's `near_dedup` entry (`dedup/stored.py`)."""

from __future__ import annotations

from typing import Any

import io

from lwmkit.pipelines.tools.report_plots import Plot, esc, fmt_int

TITLE = "Near-duplicates"


def plot_near_duplicates(root: dict[str, Any]) -> Plot:
    """Two bar charts (similarity to the kept twin; documents per cluster) and the parameters."""
    near = root.get("near_dedup") or {}
    params = near.get("params") or {}
    # Each kind's rule: text's threshold; images' max_distance (bits) and threshold; videos' pair.
    rule = ", ".join(f"{k} {esc(params[k])}" for k in ("method", "library", "threshold", "max_distance",
                                                          "clip_threshold", "bands", "rows") if k in params)
    details = f"{fmt_int(near.get('removed', 0))} removed; {rule}"
    hist = near.get("histogram") or {}
    counts = hist.get("counts") or []
    if not near.get("removed") or not counts:
        return Plot(None, "", f"Near-dedup ran and removed nothing ({rule}).", details=details)
    low, high = float(hist["low"]), float(hist["high"])
    width = (high - low) / len(counts)
    sizes = near.get("cluster_sizes") or {}
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), layout="constrained")
    FigureCanvasAgg(fig)  # Agg only, as the other sections
    left, right = fig.subplots(1, 2)
    left.bar([low + width * (i + 0.5) for i in range(len(counts))], counts, width=width * 0.9)
    left.set_xlabel("similarity to the kept twin")
    left.set_ylabel("documents removed")
    right.bar([str(k) for k in sizes], list(sizes.values()))
    right.set_xlabel("documents in the cluster (survivor included)")
    right.set_ylabel("clusters")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return Plot(buf.getvalue(), "Histogram of near-duplicate similarity and bar chart of cluster sizes", details=details)
