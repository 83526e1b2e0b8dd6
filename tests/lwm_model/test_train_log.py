"""The trainer's human-readable outputs: the metrics file (a resumed run's repeated steps), progress lines, the plot."""

from __future__ import annotations

import math

import pytest
from lwmkit.lwm_model.train_log import MetricsLog, plot_losses, progress_line, read_metrics


def _record(stage_index, step, loss, **extra):
    return {"stage": f"s{stage_index}", "stage_index": stage_index, "step": step,
            "global_step": 10 * stage_index + step, "loss": loss, "lr": 1e-3, "tokens_per_s": 12_345.0, "padding": 0.031, "step_s": 0.5, "mfu": None,
            **extra}


def test_metrics_file_keeps_the_last_record_of_each_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for rec in (_record(0, 1, 5.0), _record(0, 2, 4.0), _record(0, 3, 3.5),  # then preempted after step 3...
                _record(0, 3, 3.4), _record(1, 1, float("nan"))):  # ...resumed from step 2's checkpoint
        log.write(rec)
    log.close()
    records = read_metrics(path)
    assert [(r["stage_index"], r["step"], r["loss"]) for r in records[:3]] == [(0, 1, 5.0), (0, 2, 4.0), (0, 3, 3.4)]
    assert records[3]["loss"] == "nan"  # JSON has no NaN; the fact stays visible
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"step": 4}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 6: not a metrics record"):
        read_metrics(path)
    lines = open(path, encoding="utf-8").read().splitlines()
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join([*lines[:5], "[" * 100_000]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 6: not a metrics record: JSON: JSON nested too deeply"):
        read_metrics(path)


def test_progress_line_reads_like_a_sentence():
    rec = _record(0, 4, 3.0, text_loss=2.0, vision_loss=4.0, text_weight=10.0, vision_weight=5.0, mfu=0.4123)
    line = progress_line(rec, steps=100)
    assert line == ("[s0] step 4/100 | loss 3.000 (text 2.000, vision 4.000) | lr 1.0e-03 | 12.3k tok/s | pad 3.1% | "
                    "mfu 41.2% | 0.50 s/step | eta 48s")
    text_only = progress_line(_record(0, 99, 3.0, text_loss=3.0, text_weight=9.0, step_s=70.0), steps=200)
    assert "(text 3.000)" in text_only and "mfu" not in text_only and text_only.endswith("eta 1h57m")


def test_loss_plot_is_a_png(tmp_path):
    records = [_record(0, s, 6.0 - s / 10, text_loss=5.0, vision_loss=7.0, text_weight=1.0, vision_weight=1.0)
               for s in range(1, 11)]
    records += [_record(1, s, "nan" if s == 2 else 4.0, text_loss=4.0, text_weight=1.0, vision_weight=0.0)
                for s in range(1, 6)]
    plot_losses(records, tmp_path / "loss.png", title="t")
    data = (tmp_path / "loss.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert math.isnan(float(records[11]["loss"]))
