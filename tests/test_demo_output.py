"""`unet demo --storage PREFIX` clears only its own output (unet_core/ownership.py DEMO_OUTPUT):
a prefix holding anything else is refused before Ray starts, an earlier demo's folders are
removed by name, and everything else under the prefix stays; locally and on the S3 server."""
from __future__ import annotations

import json

import pytest

from jobs import demo
from unet_core.errors import ConfigError, StorageError
from unet_core.io import storage


def _put(root: str, names: list[str]) -> None:
    for name in names:
        storage.write_bytes(storage.join(root, name), b"data of " + name.encode())


def _names(root: str) -> set[str]:
    try:
        return {e.uri[len(root.rstrip("/")) + 1:] for e in storage.list_files(root)}
    except StorageError:  # an absent prefix lists nothing
        return set()


def test_a_prefix_that_is_not_the_demos_is_refused_and_left_whole(store, caplog):
    _put(store, ["hospital/ct/1.dcm", "notes.txt", "model/weights.h5"])
    before = _names(store)
    assert demo.main(["--storage", store, "--cases", "1"]) == 2  # a usage error, before Ray starts
    assert "`unet demo` did not write (for example" in caplog.text
    assert _names(store) == before
    with pytest.raises(ConfigError, match=r"already holds objects that `unet demo` did not write"):
        demo.clear_output(store)
    assert _names(store) == before


def test_an_earlier_demo_is_cleared_by_name_and_other_objects_stay(store):
    out = storage.join(store, "demo")
    _put(out, ["labelled/images/case_000.nii.gz", "segmented/layout.json", "model.runs/r/ckpt", "pictures/a.png"])
    demo.clear_output(out)  # an older demo's output (no marker), only the demo's names: taken
    assert _names(out) == {"demo.json"}
    assert json.loads(storage.read_bytes(storage.join(out, "demo.json")))["job"] == "unet demo"
    _put(out, ["archive/dicom/a.dcm", "keep-me.txt"])  # with the marker: own folders go, the rest stays
    demo.clear_output(out)
    assert _names(out) == {"demo.json", "keep-me.txt"}
