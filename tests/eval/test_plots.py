"""Heatmap axis labels print the context lengths that were asked for."""

from __future__ import annotations

import pytest
from lwmkit.eval.plots import heatmap, length_label


@pytest.mark.parametrize(
    ("n", "label"),
    [(128_000, "128K"), (512_000, "512K"), (1_000_000, "1M"), (2_000_000, "2M"), (131_072, "128K"),
     (524_288, "512K"), (1_048_576, "1M"), (4096, "4K"), (32_000, "32K"), (1024_000, "1024K"),
     (1400, "1400"), (100_352, "98K"), (100_001, "100001"), (700, "700")],
)  # fmt: skip
def test_length_labels_name_the_length_asked_for(n, label):
    assert length_label(n) == label


def test_heatmap_ticks_use_those_labels(tmp_path, monkeypatch):
    import matplotlib.axes

    seen = []
    real = matplotlib.axes.Axes.set_xticks
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks",
                        lambda self, ticks, labels=None, **kw: (seen.append(labels), real(self, ticks, labels, **kw))[1])  # fmt: skip
    rows = [{"task": "t", "length": n, "depth": d, "score": 1.0} for n in (128_000, 512_000) for d in (0.0, 100.0)]
    heatmap(rows, str(tmp_path / "h.png"))
    assert seen[0] == ["128K", "512K"] and (tmp_path / "h.png").stat().st_size > 0
