"""`unet send` fenced by its lease (issue 32): with the real lease module on a folder and on the S3
server, a run whose output is taken over while it sends stops before its next object and rewrites
no table part; exit 2 (LeaseLost)."""
from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from jobs import send
from jobs.exits import Exit
from tests.support.segment_run import serial_run
from unet_core.io import dicomweb, storage
from unet_core.io.lease import LEASE_FILE, LeaseInfo
from unet_core.segmentation import delivery
from unet_core.segmentation.store import OutputStore
from unet_core.synthetic_studies import write_studies

DEST = "dicomweb+http://127.0.0.1:9/dicom-web"  # never reached: the store below stands in for the STOW


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    write_studies(str(root), n_patients=3, studies_per_patient=1, size=16, seed=5, roles=("thick",))
    return root


def _parts(out: str, buckets: int) -> dict[str, bytes]:
    store = OutputStore(out)
    found = {}
    for b in range(buckets):
        uri = store.volume_part_uri(b)
        if storage.exists(uri):
            found[uri] = storage.read_bytes(uri)
    return found


@pytest.mark.parametrize("takeover_at", [1, None], ids=["taken-over", "kept"])
def test_unet_send_stops_at_its_next_object_once_another_run_holds_the_output(studies, store, tmp_path, monkeypatch,
                                                                              takeover_at):
    root = tmp_path / "in"
    shutil.copytree(studies, root)
    out = store
    serial_run([str(root)], out, dicom_seg=True)
    buckets = OutputStore(out).read_layout().buckets
    before = _parts(out, buckets)
    lease_uri = storage.join(out, LEASE_FILE)
    stored: list[str] = []

    def pacs(dest: str, data: bytes, expected=()):
        """The STOW stand-in; after its `takeover_at`-th object another run takes the output over
        (as one does when this run's heartbeats stop reaching the store)."""
        stored.append(expected[0])
        if len(stored) == takeover_at:
            info = LeaseInfo.from_json(storage.read_bytes(lease_uri), lease_uri)
            storage.write_bytes(lease_uri, replace(info, token="another-run", job="unet segment").to_json())
        return tuple(expected)

    monkeypatch.setattr(delivery.dicomweb, "store", pacs)
    monkeypatch.setattr(dicomweb, "probe", lambda uri: None)
    rc = send.main([out, "--to", DEST, "--dicomweb-concurrency", "1"])
    segs = sum(1 for r in OutputStore(out).volume_table() if r.seg_uri)
    assert segs >= 3
    if takeover_at is None:  # the control: a run that keeps its lease sends everything and records it
        assert rc == Exit.OK and len(stored) == segs
        assert all(r.sent_to == DEST for r in OutputStore(out).volume_table() if r.seg_uri)
        assert not storage.exists(lease_uri)  # released
        return
    assert rc == Exit.USAGE
    assert len(stored) == takeover_at  # nothing sent after the takeover
    assert _parts(out, buckets) == before  # no table part rewritten
    holder = LeaseInfo.from_json(storage.read_bytes(lease_uri), lease_uri)
    assert holder.token == "another-run"  # the other run's lease is left alone
