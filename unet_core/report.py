"""Run reports: static HTML pages (Jinja2 templates, matplotlib plots) that open from a bucket or a
laptop without a server. Every link and image is relative to the page.

    segment_report(out, summary)    report.html + report/*.png beside the volume table
    training_report_html(info, ...) report.html beside curves.png in a model bundle

The segment report streams the volume table part by part, reading only the columns it needs, and
keeps fixed-size aggregates (counts, fixed-bin histograms, a per-minute throughput series, the
slowest ten, the first QC montages), so its memory does not grow with the archive.
"""
from __future__ import annotations

import heapq
import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import jinja2
import numpy as np

from unet_core.io import storage
from unet_core.segmentation.records import Status, VolumeRecord
from unet_core.segmentation.store import (
    LAYOUT_FILE,
    PLAN_TABLE,
    PLOTS_FOLDER,
    REPORT_FILE,
    SUMMARY_FILE,
    Folder,
    OutputStore,
)
from unet_core.segmentation.summary import RunSummary
from unet_core.segmentation.tables import TableCounts

__all__ = ["REPORT_FILE", "VolumeAggregates", "aggregate_volume_table", "segment_report", "training_report_html"]
SLOWEST = 10
MAX_FAILURE_GROUPS = 40  # (reason, folder) groups listed; the rest are counted
EXAMPLES = 3
PER_SECOND_LIMIT = 7200  # distinct seconds kept for the throughput plot of a short run
TABLES = (  # what the report links, once each, and how to read it
    (Folder.VOLUMES, "the volume table: one row per volume (and per object set aside: kind set_aside)"),
    (Folder.SERIES_INDEX, "the series index: one row per listed object"),
    (Folder.RECORDS, "per-volume completion records (ok/, error/)"),
    (Folder.MASKS, "masks, <volume_id>.nii.gz on the source grid"),
    (Folder.SLICES, "per-slice masks, <volume_id>.parquet"),
    (Folder.SEG, "DICOM SEG, <volume_id>.dcm"),
    (Folder.RTSTRUCT, "DICOM RT Structure Sets, <volume_id>.dcm"),
    (Folder.QC, "QC montages, <volume_id>.png"),
)
GALLERY = 60
ML_BINS = np.concatenate([[0.0], np.logspace(-2, 5, 57)])  # 0.01 mL .. 100 L, log-spaced
HU_BINS = np.arange(-1000.0, 2001.0, 25.0)


def _env():
    env = jinja2.Environment(loader=jinja2.PackageLoader("unet_core", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    env.filters["href"] = safe_href
    return env


def safe_href(link: str) -> str:
    """A link a report may hold: a relative path, or an http(s) address; anything else (a
    `javascript:` or `file:` link made of a file name, an absolute path) becomes "#"."""
    scheme = urlsplit(link).scheme.lower()
    if scheme in ("http", "https"):
        return link
    if scheme or link.startswith(("/", "\\")) or any(ord(c) < 32 for c in link):
        return "#"
    return quote(link, safe="/._-~%")


@dataclass
class VolumeAggregates:
    """What the segment report and `unet status` show, accumulated over the volume table's rows:
    the counts the job's summary also counts by (tables.TableCounts), and the report's own."""

    counts: TableCounts = field(default_factory=TableCounts)
    per_minute: Counter = field(default_factory=Counter)  # "YYYY-mm-ddTHH:MM" -> volumes finished
    slices_per_minute: Counter = field(default_factory=Counter)
    per_second: Counter = field(default_factory=Counter)  # "YYYY-mm-ddTHH:MM:SS" -> volumes (short runs)
    slices_per_second: Counter = field(default_factory=Counter)
    failure_groups: Counter = field(default_factory=Counter)  # (error type, folder) -> volumes / objects
    failure_examples: dict = field(default_factory=dict)  # (error type, folder) -> a few sources
    ml_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(ML_BINS) - 1, np.int64))
    hu_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(HU_BINS) - 1, np.int64))
    slowest: list = field(default_factory=list)  # a min-heap of (seconds, volume id, row)
    gallery: list = field(default_factory=list)  # (volume id, qc uri)
    gallery_total: int = 0
    delivered: Counter = field(default_factory=Counter)  # DICOMweb service -> SEGs stored there
    send_failed: int = 0  # SEGs whose last attempt to store failed (send_error)
    rtstructs_delivered: Counter = field(default_factory=Counter)  # DICOMweb service -> RTSTRUCTs stored there
    rtstruct_send_failed: int = 0  # RTSTRUCTs whose last attempt to store failed (rtstruct_send_error)
    segs: int = 0  # ok volumes with a DICOM SEG (seg_uri)
    rtstructs: int = 0  # ok volumes with an RT Structure Set (rtstruct_uri)

    def dicom_line(self) -> str:
        """The DICOM objects the output holds (--dicom-seg, --rtstruct), in one line; "" when none."""
        if not self.segs and not self.rtstructs:
            return ""
        return f"{self.segs:,} SEGs, {self.rtstructs:,} RTSTRUCTs"

    @property
    def by_status(self) -> Counter:
        return self.counts.by_status

    @property
    def by_error_type(self) -> Counter:
        return self.counts.by_error_type

    @property
    def not_selected(self) -> Counter:  # volumes left out, by the rule that did
        return self.counts.not_selected

    def delivery_line(self) -> str:
        """Where the SEGs and RTSTRUCTs went (--send, unet send), in one line; "" when none was sent."""
        if not (self.delivered or self.send_failed or self.rtstructs_delivered or self.rtstruct_send_failed):
            return ""
        parts = [f"{n:,} SEGs stored at {dest}" for dest, n in self.delivered.most_common()]
        parts += [f"{n:,} RTSTRUCTs stored at {dest}" for dest, n in self.rtstructs_delivered.most_common()]
        if self.send_failed:
            parts.append(f"{self.send_failed:,} could not be sent (send_error; a re-run or unet send retries them)")
        if self.rtstruct_send_failed:
            parts.append(f"{self.rtstruct_send_failed:,} RTSTRUCTs could not be sent (rtstruct_send_error; a re-run "
                         "or unet send retries them)")
        return "; ".join(parts)

    def add(self, rows: list[VolumeRecord]) -> None:
        ml, hu = [], []
        for r in rows:
            self.counts.add_row(r)
            if r.status == Status.ERROR:
                self._failure(r)
            if r.status != Status.OK:
                continue
            self.segs += bool(r.seg_uri)
            self.rtstructs += bool(r.rtstruct_uri)
            if r.sent:
                self.delivered[r.sent_to or "?"] += 1
            elif r.send_error:
                self.send_failed += 1
            if r.rtstruct_sent:
                self.rtstructs_delivered[r.rtstruct_sent_to or "?"] += 1
            elif r.rtstruct_send_error:
                self.rtstruct_send_failed += 1
            if r.finished:
                minute, second = r.finished[:16], r.finished[:19]
                self.per_minute[minute] += 1
                self.slices_per_minute[minute] += int(r.n_slices or 0)
                if second in self.per_second or len(self.per_second) < PER_SECOND_LIMIT:
                    self.per_second[second] += 1
                    self.slices_per_second[second] += int(r.n_slices or 0)
            if r.mask_volume_ml is not None:
                ml.append(float(r.mask_volume_ml))
            if r.mean_hu_in_mask is not None:
                hu.append(float(r.mean_hu_in_mask))
            times = {k: float(getattr(r, k) or 0.0) for k in ("decode_seconds", "predict_seconds", "write_seconds")}
            total = sum(times.values())
            item = (total, r.volume_id, {"volume_id": r.volume_id, "n_slices": r.n_slices, **times})
            if len(self.slowest) < SLOWEST:
                heapq.heappush(self.slowest, item)
            elif total > self.slowest[0][0]:
                heapq.heapreplace(self.slowest, item)
            if r.qc_uri:
                self.gallery_total += 1
                if len(self.gallery) < GALLERY:
                    self.gallery.append((r.volume_id, r.qc_uri))
        if ml:
            self.ml_hist += np.histogram(np.clip(ml, 0, ML_BINS[-1]), ML_BINS)[0]
        if hu:
            self.hu_hist += np.histogram(np.clip(hu, HU_BINS[0], HU_BINS[-1]), HU_BINS)[0]


    def _failure(self, r: VolumeRecord) -> None:
        """Failures grouped by reason and folder (24 gzipped files of one folder are one line)."""
        source = str(r.source or "")
        folder = source.rstrip("/").rsplit("/", 1)[0] + "/" if "/" in source.rstrip("/") else source
        key = (r.error_type.value or "unknown", folder)
        self.failure_groups[key] += 1
        examples = self.failure_examples.setdefault(key, [])
        if len(examples) < EXAMPLES:
            examples.append(source.rstrip("/").rsplit("/", 1)[-1] or r.volume_id)

    def failure_table(self) -> tuple[list[dict], int]:
        """The largest groups first, and how many failures the groups not listed hold."""
        groups = self.failure_groups.most_common()
        shown = [{"reason": k[0], "folder": k[1], "count": n, "examples": self.failure_examples[k]}
                 for k, n in groups[:MAX_FAILURE_GROUPS]]
        return shown, sum(n for _, n in groups[MAX_FAILURE_GROUPS:])


def aggregate_volume_table(out: str) -> VolumeAggregates:
    """The aggregates of an output's volume table, read part by part through its store (any
    layout version it reads; one part's rows held at a time)."""
    agg = VolumeAggregates()
    for part in OutputStore(out).volume_parts():
        agg.add(part)
    return agg


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _plots(agg: VolumeAggregates) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    if agg.per_minute:
        x, volumes, slices, width, unit = _throughput_series(agg)
        fig, ax = plt.subplots(figsize=(9, 3))
        ax.bar(x, volumes, width=width * 0.9, align="edge", color="#4c78a8")
        ax.set_xlabel(f"{unit} after {min(agg.per_minute)}Z")
        ax.set_ylabel(f"volumes finished per {width:g} {unit}")
        ax2 = ax.twinx()
        ax2.plot([v + width / 2 for v in x], slices, color="#f58518", marker=".")
        ax2.set_ylabel("slices/s")
        ax.set_xlim(0, max(x[-1] + width, width))
        ax.set_title("throughput over time")
        out["throughput.png"] = _png(fig)
    if agg.ml_hist.sum():
        fig, ax = plt.subplots(figsize=(9, 3))
        ax.stairs(agg.ml_hist, ML_BINS, fill=True, color="#54a24b")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("mask volume (mL)")
        ax.set_ylabel("volumes")
        ax.set_title(f"mask volumes of {int(agg.ml_hist.sum()):,} volumes")
        out["volume_ml.png"] = _png(fig)
    if agg.hu_hist.sum():
        fig, ax = plt.subplots(figsize=(9, 3))
        ax.stairs(agg.hu_hist, HU_BINS, fill=True, color="#e45756")
        ax.set_xlabel("mean HU in the mask (CT)")
        ax.set_ylabel("volumes")
        ax.set_title(f"mean HU of {int(agg.hu_hist.sum()):,} CT volumes")
        out["mean_hu.png"] = _png(fig)
    return out


def _throughput_series(agg: VolumeAggregates) -> tuple[list[float], list[int], list[float], float, str]:
    """(bin starts, volumes per bin, slices/s per bin, bin width, unit) with the unit and bins chosen
    from the run's length: seconds for a run of a few minutes, minutes up to a few hours, hours
    beyond; about 40 bins."""
    short = len(agg.per_second) < PER_SECOND_LIMIT and agg.per_second
    counts, slice_counts = (agg.per_second, agg.slices_per_second) if short else (agg.per_minute, agg.slices_per_minute)
    fmt = "%Y-%m-%dT%H:%M:%S" if short else "%Y-%m-%dT%H:%M"
    stamps = {k: time.mktime(time.strptime(k, fmt)) for k in counts}
    t0 = min(stamps.values())
    span = max(stamps.values()) - t0 + (1 if short else 60)
    unit, scale = ("seconds", 1.0) if span <= 300 else ("minutes", 60.0) if span <= 3 * 3600 else ("hours", 3600.0)
    step = max(1.0 if short else 60.0, span / 40)
    for nice in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400):
        if nice >= step:
            step = float(nice)
            break
    n_bins = int(span // step) + 1
    volumes, slices = [0] * n_bins, [0] * n_bins
    for k, t in stamps.items():
        b = int((t - t0) // step)
        volumes[b] += counts[k]
        slices[b] += slice_counts[k]
    return ([b * step / scale for b in range(n_bins)], volumes, [s / step for s in slices], step / scale, unit)


def relative(out: str, uri: str) -> str:
    """A link from a page at the output's root to one of its objects."""
    return OutputStore(out).relative(uri)


def segment_report(out: str, summary: RunSummary) -> str:
    """Write report.html (and report/*.png) at the root of a segment output; returns its URI."""
    agg = aggregate_volume_table(out)
    store = OutputStore(out)
    plots = {}
    for name, data in _plots(agg).items():
        storage.write_bytes(store.plot_uri(name), data)
        plots[name.split(".")[0]] = f"{PLOTS_FOLDER}/{name}"
    slowest = [{**row, "total": total, **{k: float(row.get(k) or 0.0) for k in
                                         ("decode_seconds", "predict_seconds", "write_seconds")}}
               for total, _, row in sorted(agg.slowest, key=lambda x: -x[0])]
    links = [(name, name, "") for name in (SUMMARY_FILE, LAYOUT_FILE, PLAN_TABLE) if store.has_file(name)]
    for folder, what in TABLES:
        if store.has_folder(folder):
            how = " (a Parquet dataset: read the folder, e.g. pyarrow.parquet.read_table or pandas.read_parquet)" \
                if folder in (Folder.VOLUMES, Folder.SERIES_INDEX) else ""
            links.append((f"{folder.value}/", f"{folder.value}/", what + how))
    failure_groups, failures_not_listed = agg.failure_table()
    html = _env().get_template("segment_report.html.j2").render(
        title=out, summary=summary, model_identity=summary.model_identity,
        written=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        by_status=sorted(agg.by_status.items()), by_error_type=agg.by_error_type.most_common(),
        not_selected=agg.not_selected.most_common(), selection=summary.selection_line(),
        delivery=agg.delivery_line(), dicom=agg.dicom_line(),
        failures=failure_groups, failures_not_listed=failures_not_listed, plots=_Plots(plots), slowest=slowest,
        gallery=[{"volume_id": v, "href": relative(out, u)} for v, u in agg.gallery],
        gallery_more=agg.gallery_total > len(agg.gallery), gallery_total=agg.gallery_total, links=links,
    )
    uri = store.report_uri
    storage.write_bytes(uri, html.encode())
    return uri


class _Plots(dict):
    def __getattr__(self, key):
        return self.get(key, "")


def training_report_html(name: str, training: dict, curves: str = "curves.png",
                         links: list[tuple[str, str]] | None = None) -> bytes:
    """report.html of a bundle: the epochs, the curves, events, configuration."""
    history = [{k: (v if v is not None else float("nan")) for k, v in h.items()} for h in training.get("history", [])]
    for h in history:
        for key in ("train_loss", "train_dice_hard", "val_loss", "val_dice_hard", "learning_rate",
                    "slices_per_second", "epoch_seconds"):
            h.setdefault(key, float("nan"))
    events = [", ".join(f"{k} {v}" for k, v in e.items() if k != "time") for e in training.get("events", [])]
    config = json.dumps({k: training.get(k) for k in ("train", "augment", "workers", "data", "data_identity", "run")
                         if k in training}, indent=2, default=str)
    html = _env().get_template("train_report.html.j2").render(
        name=name, history=history, best_epoch=int(training.get("best_epoch", 0)),
        best_val_dice=float(training.get("best_val_dice", float("nan"))), stopped_early=training.get("stopped_early"),
        slices_per_second=float(training.get("slices_per_second", 0.0)), workers=training.get("workers", 1),
        curves=curves, events=events, config=config,
        links=links or [("bundle description (bundle.json)", "bundle.json"), ("metric history (JSON)", "history.json"),
                        ("Keras model", "model.keras"), ("training curves", curves)],
    )
    return html.encode()
