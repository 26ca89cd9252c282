"""`unet status OUTPUT`: where an existing `unet segment` output stands, in a few lines, without
recomputing anything (no Ray): counts by status and reason, the last run, the model's identity,
and what a re-run would do. `--model BUNDLE` also says whether that bundle would redo everything.

Exit status: 0 when every volume is ok, 3 when some failed, 2 when OUTPUT is not a segment output.
"""
from __future__ import annotations

import argparse
import json
import sys

from jobs.exits import Exit, run_main
from jobs.output import configure as configure_output
from jobs.output import safe
from unet_core.bundle import bundle_identity
from unet_core.errors import ConfigError, NotFoundError
from unet_core.io import storage
from unet_core.report import aggregate_volume_table
from unet_core.segmentation.records import Status
from unet_core.segmentation.store import Folder, OutputStore
from unet_core.segmentation.summary import RunSummary

RECORDS_COUNTED = 10_000  # completion records of an interrupted run, counted up to this many


# No --config here (unlike segment and send): its only values are the output and a bundle, paths a
# user types to ask one question, and the file a segment run was configured with holds keys status
# has no use for (input, selection, limits), which --config would have to refuse as unknown.
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet status", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="the --output of a `unet segment` run (local or s3://)")
    p.add_argument("--model", default=None, help="a bundle: would a re-run with it redo every volume?")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _json(uri: str) -> dict | None:
    """A JSON object of the output (None when it is not there; any other failure raises)."""
    try:
        data = storage.read_bytes(uri)
    except NotFoundError:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{uri}: not valid JSON ({exc.__class__.__name__}); it is not this tool's, "
                          "or it was edited") from None


def _count(prefix: str, limit: int) -> tuple[int, bool]:
    try:
        entries = storage.list_files(prefix)
    except NotFoundError:
        return 0, False
    return min(len(entries), limit), len(entries) > limit


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    configure_output(args.verbose)

    out = args.output.rstrip("/")
    store = OutputStore(out)
    layout, summary = _json(store.layout_uri), RunSummary.read(out)
    if layout is None:
        raise ConfigError(f"{out}: not a `unet segment` output (no layout.json)")
    agg = aggregate_volume_table(out)
    ok, failed, skipped = (agg.by_status.get(k, 0) for k in ("ok", "error", "skipped"))
    inputs = ", ".join(layout.get("inputs", []))
    interrupted = summary is None or store.has_folder(Folder.PLAN)  # a plan part left: the last run did not finish
    lines = [f"{out}: unet segment output of {inputs}"]
    if summary:
        lines.append(f"  last run: finished {summary.finished}, {summary.total_seconds:.0f}s, "
                     f"{summary.segmented_now:,} volumes segmented, {summary.objects_listed:,} "
                     f"objects listed ({summary.headers_read:,} headers read)")
        lines.append(f"  model: {summary.model} (identity {summary.model_identity})")
        lines.append(f"  privacy: {summary.privacy()}")
    not_selected = sum(agg.not_selected.values())
    lines.append(f"  volumes: {ok:,} ok, {failed:,} failed, {not_selected:,} not selected, "
                 f"{skipped - not_selected:,} objects skipped")
    if summary:
        lines.append(f"  selection: {summary.selection_line()}")
    if agg.not_selected:
        lines.append("  not selected, by rule: " + ", ".join(f"{k} {v:,}" for k, v in agg.not_selected.most_common()))
    if agg.dicom_line():
        lines.append(f"  DICOM objects: {agg.dicom_line()}")
    if agg.delivery_line():
        lines.append(f"  delivery: {agg.delivery_line()}")
    if agg.by_error_type:
        lines.append("  failures by reason: " + ", ".join(f"{k} {v:,}" for k, v in agg.by_error_type.most_common()))
    if interrupted:
        n, more = _count(store.records_folder(Status.OK), RECORDS_COUNTED)
        lines.append(f"  the last run did not finish: a re-run resumes; {n:,}{'+' if more else ''} volumes already "
                     "have completion records and are not redone")
    redo_all = False
    if args.model:
        identity = bundle_identity(args.model)
        redo_all = summary is not None and identity != summary.model_identity
        lines.append(f"  --model {args.model}: identity {identity}"
                     + (", another model: a re-run with it redoes every volume" if redo_all else ", the same model"))
    if not redo_all:
        lines.append(f"  a re-run would: list the inputs again and read only new or changed objects' headers; retry "
                     f"the {failed:,} failed volumes; carry the {ok:,} ok volumes over unless their objects changed")
    if storage.exists(store.report_uri):
        lines.append(f"  report: {store.report_uri}")
    print(safe("\n".join(lines)).replace("\\x0a", "\n"))
    return Exit.SOME_FAILED if failed else Exit.OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
