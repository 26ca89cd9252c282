"""A job deletes only objects it wrote, and never an input (unet_core/ownership.py):
the names it owns, outputs that are not its own, inputs and outputs nested either way."""
from __future__ import annotations

import os

import pytest

from unet_core import ownership
from unet_core.errors import ConfigError
from unet_core.ownership import OutputNames, check_inputs, check_output, delete_owned, is_owned

VID = "dcm-0123456789abcdef"


def test_the_names_this_tool_gives():
    for name in ("layout.json", "summary.json", "report.html", "volumes/part-00003.parquet",
                 "series_index/part-00000.parquet", f"masks/{VID}.nii.gz", f"slices/{VID}.parquet", f"qc/{VID}.png",
                 f"seg/{VID}.dcm", f"records/ok/{VID}.parquet", "masks/nii-case_7-0123abcd.nii.gz",
                 "report/throughput.png"):
        assert is_owned(name), name
    for name in ("masks/truth.nii.gz", "masks/case7.nii.gz", "volumes/notes.txt", "images/x.dcm", "README",
                 f"masks/{VID}.nii", f"records/maybe/{VID}.parquet", "seg/other.dcm"):
        assert not is_owned(name), name


def _tree(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"data of " + name.encode())


def test_a_first_run_refuses_a_prefix_that_holds_other_objects(tmp_path):
    out = tmp_path / "out"
    assert not check_output(str(out))  # absent: fine
    _tree(out, [f"masks/{VID}.nii.gz", "volumes/part-00000.parquet"])
    assert not check_output(str(out))  # only our names: an interrupted first run
    _tree(out, ["scans/ct1.dcm"])
    with pytest.raises(ConfigError, match=r"did not write \(for example scans/ct1\.dcm\)"):
        check_output(str(out))
    _tree(out, ["layout.json"])
    assert check_output(str(out))  # layout.json: this tool's output
    assert (out / "scans/ct1.dcm").read_bytes() == b"data of scans/ct1.dcm"


def test_a_first_run_refuses_a_foreign_bucket_prefix(s3_bucket):
    from unet_core.io import storage

    storage.write_bytes(f"s3://{s3_bucket}/data/archive/a.dcm", b"x")
    with pytest.raises(ConfigError, match="archive/a.dcm"):
        check_output(f"s3://{s3_bucket}/data")
    assert not check_output(f"s3://{s3_bucket}/elsewhere")


def test_overwrite_removes_only_what_this_tool_named(tmp_path):
    out = tmp_path / "out"
    ours = [f"masks/{VID}.nii.gz", f"seg/{VID}.dcm", f"records/error/{VID}.parquet", "volumes/part-00001.parquet"]
    theirs = ["masks/truth.nii.gz", "seg/from_pacs.dcm", "volumes/README.txt"]
    _tree(out, ours + theirs)
    removed, left = delete_owned(str(out), ownership.OVERWRITE_FOLDERS)
    assert (removed, left) == (len(ours), len(theirs))
    assert not any((out / n).exists() for n in ours)
    assert all((out / n).read_bytes() == b"data of " + n.encode() for n in theirs)
    assert not (out / "records").exists()  # emptied folders go


def test_inputs_and_outputs_nested(tmp_path):
    d = tmp_path / "d"
    (d / "volumes").mkdir(parents=True)
    (d / "study").mkdir()
    with pytest.raises(ConfigError, match="inside the output's own folder volumes/"):
        check_inputs((str(d / "volumes"),), str(d))
    with pytest.raises(ConfigError, match="the same place"):
        check_inputs((str(d) + "/",), str(d))
    check_inputs((str(d / "study"),), str(d))  # an input next to the output's folders
    check_inputs((str(d),), str(d / "out"))  # an output inside the input
    link = tmp_path / "link"
    link.symlink_to(d)
    with pytest.raises(ConfigError, match="own folder volumes/"):
        check_inputs((str(link / "volumes"),), str(d))  # the same folder through a symlink


def test_an_output_inside_an_input_is_never_listed(tmp_path):
    archive = tmp_path / "archive"
    (archive / "out").mkdir(parents=True)
    names = OutputNames.of(str(archive / "out"), (str(archive),))
    assert names.inside_input
    assert names.excludes(str(archive / "out" / "masks" / f"{VID}.nii.gz"))
    assert names.excludes(str(archive / "out" / "notes.txt"))  # all of it, when it lies in an input
    assert not names.excludes(str(archive / "series" / "a.dcm"))
    link = tmp_path / "link"
    link.symlink_to(archive)
    through_link = OutputNames.of(str(archive / "out"), (str(link),))
    assert through_link.excludes(str(link / "out" / "masks" / f"{VID}.nii.gz"))
    # an input inside the output's prefix (not its own folders): only this tool's names are left out
    d = tmp_path / "d"
    names = OutputNames.of(str(d), (str(d / "study"),))
    assert not names.inside_input
    assert not names.excludes(str(d / "study" / "a.dcm"))
    assert names.excludes(str(d / "masks" / f"{VID}.nii.gz"))


def test_s3_prefixes_compare_without_repeated_slashes(s3_bucket):
    with pytest.raises(ConfigError, match="own folder masks/"):
        check_inputs((f"s3://{s3_bucket}//out/masks/",), f"s3://{s3_bucket}/out")


def test_relative_paths_are_compared_as_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("d/records")
    with pytest.raises(ConfigError, match="own folder records/"):
        check_inputs(("d/records",), os.path.abspath("d"))


# ---- the listing never hangs or wanders ------------------------------------------------------------
def test_fifos_and_file_links_are_listed_with_a_reason_and_never_read(tmp_path):
    from support.dicom_factory import write_series
    from unet_core.config import Limits
    from unet_core.segmentation import planning
    from unet_core.synthetic import SeriesSpec

    archive = tmp_path / "archive"
    write_series(archive / "scan!", SeriesSpec(rows=16, columns=16, n_slices=3))  # "!/" only after ".zip"
    os.mkfifo(archive / "pipe.dcm")
    outside = tmp_path / "elsewhere.dcm"
    outside.write_bytes((next((archive / "scan!").iterdir())).read_bytes())
    (archive / "link.dcm").symlink_to(outside)
    for follow in (False, True):
        rows, counts, _ = planning.scan_partition([planning.Unit(str(archive), True)], [], Limits(), follow, ())
        by_name = {os.path.basename(r.uri): r for r in rows}
        assert by_name["pipe.dcm"].error_type == "not_read" and "FIFO" in by_name["pipe.dcm"].reason
        link = by_name["link.dcm"]
        if follow:
            assert link.kind == "image"  # read through the link
        else:
            assert link.error_type == "not_read" and "--follow-symlinks" in link.reason
        images = [r for r in rows if r.kind == "image" and "scan!" in r.uri]
        assert len(images) == 3 and counts.listed == 5


def test_a_member_separator_only_follows_a_zip_name():
    from unet_core.io.archive import split_member

    assert split_member("/a/scan!/b.dcm") == ("/a/scan!/b.dcm", None)
    assert split_member("s3://b/x.ZIP!/m!/b.dcm") == ("s3://b/x.ZIP", "m!/b.dcm")
    assert split_member("/a/scan!/x.zip!/b.dcm") == ("/a/scan!/x.zip", "b.dcm")


@pytest.mark.parametrize("folder,name", [
    (b"caf\xe9", b"x\xe9.dcm"),  # Latin-1, as old Samba / NFS exports name files
    (b"a", b"new\nline\x1b[31m.dcm"),  # a newline and an escape sequence
    (b"scan!", b"!.dcm"),  # "!" that is no member separator
    (b"a..b", b"%41 50%.dcm"),  # ".." inside a name; a name that looks percent-encoded already
    (b"l" * 200, b"n" * 250 + b".dcm"),  # long
])
def test_any_name_the_filesystem_allows_is_listed_and_read(tmp_path, folder, name):
    """Every object is named by text Parquet, JSON and a terminal take (a percent-encoded file://
    URI where the name is not UTF-8 or has control characters), and is read back by that name."""
    from support.dicom_factory import write_series
    from unet_core.config import Limits
    from unet_core.io import storage
    from unet_core.segmentation import planning
    from unet_core.segmentation.records import ObjectRow, table_bytes
    from unet_core.synthetic import SeriesSpec

    root = os.fsencode(tmp_path)
    os.makedirs(os.path.join(root, folder))
    write_series(tmp_path / "good", SeriesSpec(rows=16, columns=16, n_slices=2))
    good = sorted(os.listdir(tmp_path / "good"))
    os.rename(tmp_path / "good" / good[0], os.path.join(root, folder, name))
    rows, counts, _ = planning.scan_partition([planning.Unit(str(tmp_path), True)], [], Limits(), False, ())
    assert counts.listed == 2 and all(r.kind == "image" for r in rows), [(r.uri, r.reason) for r in rows]
    (odd,) = [r for r in rows if "good" not in r.uri]
    assert odd.uri.isprintable() and odd.uri.encode("utf-8")
    assert storage.read_bytes(odd.uri) == open(os.path.join(root, folder, name), "rb").read()
    table_bytes(ObjectRow, [r.to_row() for r in rows])  # Parquet takes every row
    assert len(planning.fragments_of(rows, 4)) >= 1


@pytest.mark.fuzz
def test_fuzz_names_round_trip_through_listing_and_reading():
    """Random byte names (all that POSIX allows: anything but "/" and NUL, up to 255 bytes) are
    listed under a printable UTF-8 name that reads back the same bytes."""
    import tempfile

    from hypothesis import given
    from hypothesis import strategies as st

    from unet_core.io import listing, storage

    names = st.binary(min_size=1, max_size=255).filter(
        lambda b: b"/" not in b and b"\0" not in b and not b.startswith(b".") and b not in (b".", b".."))

    @given(st.lists(names, min_size=1, max_size=4, unique=True))
    def check(batch):
        with tempfile.TemporaryDirectory() as tmp:
            root = os.fsencode(tmp)
            for i, name in enumerate(batch):
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"%d" % i)
            entries = list(listing.iter_objects(tmp))
            assert len(entries) == len(batch)
            for e in entries:
                assert e.uri.isprintable() and not e.skip
                assert storage.read_bytes(e.uri) in {b"%d" % i for i in range(len(batch))}
            assert sorted(storage.read_bytes(e.uri) for e in entries) == sorted(b"%d" % i for i in range(len(batch)))

    check()


def test_an_own_folder_that_is_a_symlink_is_refused_and_nothing_is_deleted(tmp_path):
    """`masks -> elsewhere`: --overwrite would delete elsewhere's files by name; refused instead,
    by the first-run check and by the delete itself."""
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    _tree(elsewhere, [f"{VID}.nii.gz", "truth.nii.gz"])
    _tree(out, ["layout.json", "volumes/part-00000.parquet"])
    os.symlink(elsewhere, out / "masks")
    for call in (lambda: check_output(str(out)), lambda: delete_owned(str(out), ownership.OVERWRITE_FOLDERS)):
        with pytest.raises(ConfigError, match=rf"{out}/masks is a symbolic link \(to {elsewhere}\).*refuses"):
            call()
    assert sorted(os.listdir(elsewhere)) == sorted([f"{VID}.nii.gz", "truth.nii.gz"])
    assert os.path.exists(out / "volumes/part-00000.parquet")  # refused before anything went
    os.unlink(out / "masks")
    (out / "seg").symlink_to(elsewhere, target_is_directory=True)  # prepare's and every folder alike
    with pytest.raises(ConfigError, match="seg is a symbolic link"):
        delete_owned(str(out), ("volumes",))
    assert os.path.exists(out / "volumes/part-00000.parquet")


def test_temporaries_are_swept_only_where_the_job_writes(tmp_path):
    """A killed writer's `.tmp-*` files go from the output's top level and its own folders; an
    input folder nested under the output keeps its own `.tmp-*` files (and a linked folder is not
    entered)."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    _tree(out, [".tmp-layout", f"masks/.tmp-{VID}", "records/ok/.tmp-abc", "volumes/part-00000.parquet",
                "archive/.tmp-scanner-export.dcm", "archive/series/.tmp-1", "archive/ct.dcm"])
    _tree(outside, [".tmp-theirs"])
    os.symlink(outside, out / "archive" / "linked")
    assert ownership.sweep_temporaries(str(out)) == 3
    left = sorted(os.path.relpath(os.path.join(d, n), out) for d, _, ns in os.walk(out, followlinks=True) for n in ns)
    assert left == ["archive/.tmp-scanner-export.dcm", "archive/ct.dcm", "archive/linked/.tmp-theirs",
                    "archive/series/.tmp-1", "volumes/part-00000.parquet"]
    assert ownership.sweep_temporaries(str(tmp_path / "absent")) == 0
    assert ownership.sweep_temporaries("s3://bucket/out") == 0  # no unfinished uploads are ever visible
    os.symlink(outside, out / "qc")
    with pytest.raises(ConfigError, match="qc is a symbolic link"):
        ownership.sweep_temporaries(str(out))
    assert os.path.exists(outside / ".tmp-theirs")


def test_overwrite_of_an_output_named_by_a_relative_path_removes_what_it_named(tmp_path, monkeypatch):
    """An output named by a relative path (`make demo`'s `demo-output`): the listing names what it
    finds by absolute path, and names cut at the relative path's length were no names this tool
    gives, so a second run left every object of the first in place, with a warning each."""
    monkeypatch.chdir(tmp_path)
    ours, theirs = [f"masks/{VID}.nii.gz", "volumes/part-00001.parquet"], ["masks/truth.nii.gz"]
    _tree(tmp_path / "out", ours)
    assert not check_output("out")  # an interrupted first run's objects: its own, not foreign
    _tree(tmp_path / "out", theirs)
    assert sorted(ownership.owned_objects("out")) == sorted(str(tmp_path / "out" / n) for n in ours)
    removed, left = delete_owned("out", ownership.OVERWRITE_FOLDERS)
    assert (removed, left) == (2, 1)
    assert not (tmp_path / "out/volumes").exists() and (tmp_path / "out/masks/truth.nii.gz").exists()


def test_the_demos_names():
    assert ownership.DEMO_OUTPUT.owns("demo.json") and ownership.DEMO_OUTPUT.owns("model.runs/run/ckpt/x")
    for name in ("labelled/images/case_000.nii.gz", "segmented/layout.json", "pictures/a.png"):
        assert ownership.DEMO_OUTPUT.owns(name)
    for name in ("scans/ct.dcm", "README", "labelled", "modelx/a", "demo.json.bak"):
        assert not ownership.DEMO_OUTPUT.owns(name)


def test_overwrite_checks_the_lease_before_each_removal(tmp_path):
    """delete_owned(check=lease.check): a run that lost its output stops before its next delete."""
    from unet_core.io.lease import Lease, LeaseLost

    out = tmp_path / "out"
    _tree(out, ["layout.json", f"masks/{VID}.nii.gz", "masks/dcm-00000000000000ff.nii.gz"])
    lease = Lease(str(out), "unet segment", heartbeat_seconds=3600, confirm_seconds=0).acquire()
    try:
        calls = []

        def check() -> None:
            calls.append(1)
            lease.check()

        assert delete_owned(str(out), ("masks",), check=check) == (2, 0) and len(calls) == 2
        _tree(out, [f"masks/{VID}.nii.gz"])
        os.unlink(out / ".unet-lease.json")  # removed by hand (another run may create its own now)
        with pytest.raises(LeaseLost):
            delete_owned(str(out), ("masks",), check=lease.check)
        assert os.path.exists(out / f"masks/{VID}.nii.gz")
    finally:
        lease.release()
