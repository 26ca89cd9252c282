"""`unet segment` pointed at folders that already hold things: it refuses outputs that are not its
own, never lists its own outputs as inputs, removes only what it wrote, and leaves every input byte
for byte. The run's decisions are asked of the serial executor in this process (the Ray executor
runs the same run: tests/test_segment.py); the lease refusal goes through the job itself."""
from __future__ import annotations

import os

import pytest

from jobs import segment
from jobs.exits import Exit
from tests.support.segment_run import serial_run
from tests.support.tree import digest, small_archive
from unet_core.errors import ConfigError
from unet_core.segmentation.summary import RunSummary


def test_an_input_inside_the_outputs_own_folders_is_refused_and_untouched(tmp_path):
    d = tmp_path / "d"
    small_archive(d / "volumes")
    before = digest(d)
    with pytest.raises(ConfigError, match="lies inside the output's own folder volumes/"):  # exit 2
        serial_run([str(d / "volumes")], str(d))
    assert digest(d) == before


def test_a_folder_that_is_not_an_output_is_refused_and_untouched(tmp_path):
    small_archive(tmp_path / "archive")
    (tmp_path / "results" / "masks").mkdir(parents=True)
    (tmp_path / "results" / "masks" / "truth.nii.gz").write_bytes(b"ground truth")
    (tmp_path / "results" / "notes.txt").write_bytes(b"mine")
    before = digest(tmp_path)
    with pytest.raises(ConfigError, match="did not write .* it is not an output of this tool"):
        serial_run([str(tmp_path / "archive")], str(tmp_path / "results"))
    assert digest(tmp_path) == before


def test_relative_output_inside_the_input_twice_and_overwrite_keep_everything_else(tmp_path, monkeypatch):
    archive = tmp_path / "archive"
    small_archive(archive)
    inputs_before = digest(archive)
    monkeypatch.chdir(archive)
    first = serial_run(["."], "out").summary  # relative, made absolute as the job does
    assert first.volumes_ok == 2
    # ground truth kept inside the output's masks/ folder
    (archive / "out" / "masks" / "truth.nii.gz").write_bytes(b"ground truth")
    again = serial_run(["."], "out").summary
    assert again.objects_listed == first.objects_listed == 8  # the output is never listed as input
    assert again.segmented_now == 0
    assert serial_run(["."], "out", overwrite=True).summary.segmented_now == 2
    assert RunSummary.read(str(archive / "out")).segmented_now == 2
    assert (archive / "out" / "masks" / "truth.nii.gz").read_bytes() == b"ground truth"
    after = digest(archive)
    assert {k: v for k, v in after.items() if not k.startswith("out/")} == inputs_before


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_of_this_tool_is_reused_and_only_its_names_go(tmp_path, overwrite):
    small_archive(tmp_path / "archive", n_series=1)
    out = tmp_path / "out"
    assert serial_run([str(tmp_path / "archive")], str(out)).summary.volumes_ok == 1
    (out / "volumes" / "my_notes.txt").write_bytes(b"notes")
    assert serial_run([str(tmp_path / "archive")], str(out), overwrite=overwrite).summary.volumes_ok == 1
    assert (out / "volumes" / "my_notes.txt").read_bytes() == b"notes"


def test_a_second_run_on_one_output_is_refused_while_the_first_holds_it(tmp_path, phantom_bundle):
    from unet_core.io.lease import Lease

    small_archive(tmp_path / "archive", n_series=1)
    with Lease(str(tmp_path / "out"), "unet segment"):
        rc = segment.main(["--input", str(tmp_path / "archive"), "--model", phantom_bundle, "--output",
                           str(tmp_path / "out"), "--batch-size", "8"])
    assert rc == Exit.USAGE
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # nothing written, the lease gone


def test_a_series_with_latin1_and_control_character_names_is_segmented(tmp_path):
    """Names a filesystem allows but that are not text (Latin-1 bytes, a newline) are read, and the
    mask is the one the same series gets under plain names."""
    import nibabel as nib

    small_archive(tmp_path / "plain", n_series=1)
    odd = os.path.join(os.fsencode(tmp_path), b"odd", b"caf\xe9")
    os.makedirs(odd)
    for i, name in enumerate(sorted(os.listdir(tmp_path / "plain" / "series0"))):
        data = (tmp_path / "plain" / "series0" / name).read_bytes()
        with open(os.path.join(odd, b"sl\xefce\n%d.dcm" % i), "wb") as f:
            f.write(data)
    masks = {}
    for which in ("plain", "odd"):
        out = tmp_path / f"out-{which}"
        summary = serial_run([str(tmp_path / which)], str(out)).summary
        assert summary.volumes_ok == 1 and summary.volumes_failed == 0, summary
        (mask,) = (out / "masks").rglob("*.nii.gz")
        masks[which] = nib.load(mask).get_fdata()
    assert (masks["plain"] == masks["odd"]).all() and masks["odd"].any()
