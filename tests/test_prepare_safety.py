"""`unet prepare` pointed at folders that already hold things: its inputs kept inside its output
stay byte for byte through --overwrite, an output that is not its own is refused, and two sources
that become one case id are an error naming both."""
from __future__ import annotations

import hashlib
import os

import pytest

from jobs import prepare
from jobs.exits import Exit
from tests.support.tree import digest
from unet_core.errors import ConfigError
from unet_core.synthetic import write_training_set
from unet_core.training.cases import discover_cases


def _args(out, images, masks, *extra):
    return ["--images", str(images), "--masks", str(masks), "--output", str(out), "--input-size", "32",
            "--val-fraction", "0.34", "--foreground-labels", "1", *extra]


def test_inputs_inside_the_output_survive_overwrite(tmp_path, ray_local):
    out = tmp_path / "prep"
    write_training_set(str(out / "raw"), 3, size=32, n_slices=6, seed=0)
    (out / "notes").mkdir()
    (out / "notes" / "readme.txt").write_bytes(b"mine")
    before = {k: v for k, v in digest(out).items()}
    args = _args(out, out / "raw" / "images", out / "raw" / "masks")
    assert prepare.main(args) == Exit.USAGE  # notes/ is neither an input nor this tool's
    os.remove(out / "notes" / "readme.txt")
    os.rmdir(out / "notes")
    before = digest(out)
    assert prepare.main(args) == Exit.OK
    shards = {k for k in digest(out) if k.startswith("slices/") and k.endswith(".parquet")}
    assert shards
    assert prepare.main(args) == Exit.USAGE  # already prepared: --overwrite needed
    (out / "slices" / "keep_me.txt").write_bytes(b"not a shard")
    assert prepare.main([*args, "--overwrite"]) == Exit.OK
    after = digest(out)
    assert {k: after[k] for k in before} == before  # every input byte for byte
    assert after["slices/keep_me.txt"] == hashlib.sha256(b"not a shard").hexdigest()
    assert (out / "manifest.json").exists()
    new_shards = {k for k in after if k.startswith("slices/") and k.endswith(".parquet")}
    assert new_shards and not shards & new_shards  # the first run's shards went (Ray names each write anew)


def test_two_names_that_become_one_case_id_are_an_error_naming_both(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for name in ("case 1", "case_1"):
        (tmp_path / "images" / f"{name}.nii.gz").write_bytes(b"x")
        (tmp_path / "masks" / f"{name}.nii.gz").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"case 1\.nii\.gz and .*case_1\.nii\.gz both become case id 'case_1'"):
        discover_cases(str(tmp_path / "images"), str(tmp_path / "masks"))
