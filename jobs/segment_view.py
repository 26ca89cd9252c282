"""What `unet segment` prints when a run ends: the counts, the report's address, failures, and
delivery; and the driver's memory for -v."""
from __future__ import annotations

import psutil

from jobs.exits import Exit
from jobs.output import safe
from jobs.send import report as report_sent
from unet_core.segmentation.delivery import SendCounts
from unet_core.segmentation.run import Planned, Segmented
from unet_core.segmentation.summary import RunSummary
from unet_core.segmentation.tables import TableCounts


def print_outcome(planned: Planned, done: Segmented, totals: TableCounts, summary: RunSummary,
                  sent: SendCounts | None, report: str, seconds: float) -> int:
    """Print the run's end; returns the exit status (3 when a volume or a send failed)."""
    out = planned.settings.output
    print(f"segmented {done.segmented} volumes ({done.slices} slices, {summary.slices_per_second:.1f} slices/s) "
          f"in {seconds:.0f}s; {summary.volumes_ok} ok, {summary.volumes_failed} failed, "
          + (f"{summary.volumes_not_selected} not selected, " if summary.volumes_not_selected else "")
          + f"{summary.objects_skipped} objects skipped; {planned.listed} objects listed, {planned.scanned} headers "
          f"read -> {out}")
    if summary.not_selected_by_rule:
        print("  not selected, by rule: " + ", ".join(f"{k} {v}" for k, v in totals.not_selected.most_common()))
    print(safe(f"  report: {report}"))
    if done.resumed:
        print(f"  {done.resumed} already complete (recorded by an interrupted run; not redone)")
    if done.retried:
        print(f"  {done.retried} found complete after a retry (recorded by this run's own earlier attempt; not redone)")
    for vid, error in totals.failures:
        print(safe(f"  failed: {vid}: {error}"))
    if summary.volumes_failed > len(totals.failures):
        print(f"  ... {summary.volumes_failed - len(totals.failures)} more; see {out}/volumes/")
    if totals.by_error_type:
        print("  failures by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.by_error_type.items())))
    if sent is not None:
        sent.sent += done.sent
        sent.rtstructs_sent += done.rtstructs_sent
        sent.already -= done.sent  # sent by this run's volume tasks, then found stored by the pass above
        report_sent(sent, planned.settings.send_seg)
    return Exit.SOME_FAILED if summary.volumes_failed or summary.segs_send_failed else Exit.OK


def rss_mib() -> str:
    m = psutil.Process().memory_full_info()
    return f"{m.rss / 2**20:.0f} MiB (unique {m.uss / 2**20:.0f}, shared {m.shared / 2**20:.0f})"
