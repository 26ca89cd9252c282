"""`unet send OUTPUT --to URL`: store an existing `unet segment` output's DICOM objects (SEGs and
RTSTRUCTs) at a DICOMweb service (STOW-RS): every one of an ok volume not stored there yet, once it
is checked to be the object its row names (unet_core/io/dicom/outgoing.py). Each row of the volume
table records, per kind, `sent` and `sent_to` or `send_error` (SEG) and `rtstruct_sent` and
`rtstruct_sent_to` or `rtstruct_send_error` (RTSTRUCT); running it again sends only what is still
pending. An object sent again is the same instance (its UIDs are deterministic): the server keeps
one copy.

--config FILE.yaml|json holds option values (output, to, dicomweb_concurrency, ca_bundle,
insecure_http, verbose), checked as the command line's; the command line wins. A site's PACS
settings can live there, out of the shell history.

Credentials: DICOMWEB_TOKEN, or DICOMWEB_USER and DICOMWEB_PASSWORD, or DICOMWEB_SESSION_FACTORY
(README, "Reading from and delivering to a PACS").

Exit status: 0 when every object is stored, 3 when some could not be (their rows say why), 2 for a
usage error (2 also when another run took the output over: it stops at its next object, LeaseLost),
5 when the server cannot be reached or refuses the credentials (nothing sent).
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from jobs.exits import Exit, run_main
from jobs.options import add_dicomweb_args, apply_dicomweb_args, parse_with_config
from jobs.output import configure as configure_output
from jobs.output import safe, say
from jobs.progress import Progress
from unet_core import ownership
from unet_core.errors import ConfigError
from unet_core.io import dicomweb, storage
from unet_core.io.lease import Lease
from unet_core.segmentation.delivery import SendCounts, send_pending
from unet_core.segmentation.store import OutputStore
from unet_core.segmentation.summary import RunSummary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unet send", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="the --output of a `unet segment --dicom-seg` or `--rtstruct` run (local or s3://)")
    p.add_argument("--to", required=True, metavar="URL", help="the DICOMweb service: dicomweb+https://host/dicom-web")
    add_dicomweb_args(p, sending_only=True)
    p.add_argument("--config", help="JSON/YAML file of option values (the command line wins)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@contextmanager
def deliver_progress(buckets: int) -> Iterator[Callable[[SendCounts], None]]:
    """Live progress over the table's parts while objects are sent: yields send_pending's callback."""
    with Progress("send", buckets, "table parts") as progress:
        parts = [0]

        def seen(total: SendCounts) -> None:
            parts[0] += 1
            progress.update(parts[0], total.failed)

        yield seen


def deliver(out: str, buckets: int, dest: str, workers: int, lease: Lease) -> SendCounts:
    """Send every pending object (SEG, RTSTRUCT) of an output, with live progress over the table's
    parts; the lease is checked before each object sent and each part rewritten (LeaseLost stops it)."""
    with deliver_progress(buckets) as seen:
        return send_pending(out, buckets, dest, workers, seen, check=lease.check)


def report(counts: SendCounts, dest: str) -> None:
    rtstructs = f" and {counts.rtstructs_sent} RTSTRUCTs" if counts.rtstructs_sent else ""
    print(f"sent {counts.sent - counts.rtstructs_sent} SEGs{rtstructs} to {dest}; {counts.already} there already"
          + (f"; {counts.failed} could not be sent" if counts.failed else ""))
    for vid, error in counts.errors:
        print(safe(f"  not sent: {vid}: {error}"))
    if counts.failed:
        print("  their rows say why (send_error, rtstruct_send_error); run `unet send` or the segment job again to retry them")


def main(argv: list[str]) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = parse_with_config(build_parser(), argv)
    configure_output(args.verbose)
    out = storage.absolute(args.output)
    dest = dicomweb.destination(args.to)
    layout = OutputStore(out).read_layout() if ownership.check_output(out, ownership.SEGMENT_OUTPUT) else None
    if layout is None:
        raise ConfigError(f"{out} holds no finished `unet segment` run (no layout.json)")
    apply_dicomweb_args(args, [dest])
    t = time.monotonic()
    # The table parts are rewritten: one writer per output. confirm_seconds=0: every check reads the
    # lease back (one small read beside each STOW request), so that a run taken over stops at its
    # next object, not after its next heartbeat.
    with Lease(out, "unet send", confirm_seconds=0) as lease:
        counts = deliver(out, layout.buckets, dest, args.dicomweb_concurrency, lease)
        summary = RunSummary.read(out)
        if summary is not None and not (summary.dicom_seg or summary.rtstruct) \
                and not counts.sent + counts.already + counts.failed:
            say(f"{out} was made without --dicom-seg or --rtstruct: it has no DICOM objects to send "
                "(run unet segment --dicom-seg or --rtstruct)")
    report(counts, dest)
    say(f"in {time.monotonic() - t:.0f}s")
    return Exit.SOME_FAILED if counts.failed else Exit.OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
