"""What a `unet tune` search found, as typed rows: the trials table, the best trial, the report.

    TrialRow                     one trial: its id, sampled options, best val Dice, epochs, status
    trials_table(rows)           -> Parquet bytes of O/trials.parquet (one row per trial)
    best_trial(rows)             the trial whose bundle becomes O/best/: the highest best metric
                                 among trials that finished with a bundle
    tune_report_html(rows, ...)  O/report.html: the table and val Dice per trial over epochs
"""
from __future__ import annotations

import enum
import io
import json
import math
from dataclasses import dataclass, field

import jinja2
import pyarrow as pa
import pyarrow.parquet as pq


class TrialStatus(enum.Enum):
    FINISHED = "finished"  # ran its epochs (or stopped early on its own patience) and wrote a bundle
    STOPPED = "stopped"  # stopped by the scheduler (ASHA) for a poor val Dice
    FAILED = "failed"


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    params: dict  # option dest -> sampled value
    best_metric: float | None  # best per-epoch value of the search's metric (NaN-free), None if no epoch
    epochs: int
    status: TrialStatus
    seconds: float
    bundle: str | None  # where its bundle is, when it wrote one
    curve: list[float] = field(default_factory=list)  # the metric per epoch, in order
    error: str | None = None


def trials_table(rows: list[TrialRow], metric: str) -> bytes:
    """O/trials.parquet: trial_id, params (a struct of the searched options), best_<metric>,
    epochs, status, seconds, bundle, error."""
    names = sorted({k for r in rows for k in r.params})
    params = pa.array([{k: _plain(r.params.get(k)) for k in names} for r in rows]) if names else None
    columns = {
        "trial_id": pa.array([r.trial_id for r in rows], pa.string()),
        f"best_{metric}": pa.array([r.best_metric for r in rows], pa.float64()),
        "epochs": pa.array([r.epochs for r in rows], pa.int32()),
        "status": pa.array([r.status.value for r in rows], pa.string()),
        "seconds": pa.array([r.seconds for r in rows], pa.float64()),
        "bundle": pa.array([r.bundle for r in rows], pa.string()),
        "error": pa.array([r.error for r in rows], pa.string()),
    }
    if params is not None:
        columns = {"trial_id": columns.pop("trial_id"), "params": params, **columns}
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def best_trial(rows: list[TrialRow]) -> TrialRow | None:
    done = [r for r in rows if r.bundle and r.best_metric is not None and r.status is TrialStatus.FINISHED]
    return max(done, key=lambda r: (r.best_metric, -r.seconds), default=None)


def curves_png(rows: list[TrialRow], metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    for r in rows:
        if r.curve:
            ax.plot(range(1, len(r.curve) + 1), r.curve, marker="o", markersize=3,
                    label=f"{r.trial_id} ({r.status.value})", linestyle="-" if r.status is TrialStatus.FINISHED else ":")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    if any(r.curve for r in rows):
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unet tune: {{ name }}</title>
<style>body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.7em; text-align: right; }
th { background: #f3f3f3; } tr.best td { font-weight: bold; } img { max-width: 100%; }</style></head>
<body><h1>unet tune: {{ name }}</h1>
<p>{{ rows|length }} trials, scheduler {{ scheduler }}, metric {{ metric }}.
{% if best %}Best: <b>{{ best.trial_id }}</b>, {{ metric }} {{ "%.4f"|format(best.best_metric) }}; its bundle is in
<a href="best/bundle.json">best/</a>.{% else %}No trial finished with a bundle.{% endif %}</p>
<img src="{{ curves }}" alt="{{ metric }} per trial over epochs">
<table><tr><th>trial</th>{% for p in params %}<th>{{ p }}</th>{% endfor %}<th>best {{ metric }}</th><th>epochs</th>
<th>status</th><th>seconds</th></tr>
{% for r in rows %}<tr class="{{ 'best' if best and r.trial_id == best.trial_id else '' }}"><td>{{ r.trial_id }}</td>
{% for p in params %}<td>{{ r.params.get(p) }}</td>{% endfor %}
<td>{{ "%.4f"|format(r.best_metric) if r.best_metric is not none else "" }}</td><td>{{ r.epochs }}</td>
<td>{{ r.status.value }}{% if r.error %}: {{ r.error }}{% endif %}</td><td>{{ "%.0f"|format(r.seconds) }}</td></tr>
{% endfor %}</table>
<h2>Search</h2><pre>{{ search }}</pre></body></html>
"""


def tune_report_html(name: str, rows: list[TrialRow], metric: str, scheduler: str, search: dict,
                     curves: str = "report/curves.png") -> bytes:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(_TEMPLATE).render(
        name=name, rows=rows, metric=metric, scheduler=scheduler, best=best_trial(rows), curves=curves,
        params=sorted({k for r in rows for k in r.params}), search=json.dumps(search, indent=2, default=str))
    return html.encode()


def best_of(curve: list[float]) -> float | None:
    values = [v for v in curve if v is not None and math.isfinite(v)]
    return max(values) if values else None


def _plain(value):
    return value.item() if hasattr(value, "item") else value


__all__ = ["TrialRow", "TrialStatus", "best_of", "best_trial", "curves_png", "trials_table", "tune_report_html"]
