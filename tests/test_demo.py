"""`unet demo` in a reduced form (fewer cases and epochs) into a bucket on the S3 test server:
every output is present and complete. (`make demo` runs the full form into a local folder.)"""
from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from jobs import demo
from unet_core.io import storage
from unet_core.segmentation.tables import read_volume_table

pytestmark = pytest.mark.e2e


def test_reduced_demo_writes_everything(work_bucket, ray_local, capsys):
    out = f"s3://{work_bucket}/demo"
    assert demo.main(["--storage", out, "--cases", "6", "--epochs", "6"]) == 0
    printed = capsys.readouterr().out
    assert "mean Dice" in printed and "[5/5] unet evaluate" in printed
    files = {e.uri[len(out) + 1:] for e in storage.list_files(out)}
    assert {"model/bundle.json", "model/model.keras", "model/curves.png", "prepared/manifest.json",
            "segmented/evaluation.parquet", "segmented/layout.json", "segmented/summary.json"} <= files
    assert any(f.startswith("segmented/volumes/part-") for f in files)
    assert any(f.startswith("segmented/series_index/part-") for f in files)
    volumes = read_volume_table(f"{out}/segmented")
    ok = [v for v in volumes if v["status"] == "ok"]
    assert len(ok) == 7 and all(v["error"] for v in volumes if v["status"] != "ok")
    scores = pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/segmented/evaluation.parquet"))).to_pylist()
    assert len(scores) == 7 and all(0.0 <= s["dice"] <= 1.0 for s in scores)
    assert {f"pictures/{v['volume_id']}.png" for v in ok} <= files
    assert {f"segmented/qc/{v['volume_id']}.png" for v in ok} <= files
    assert json.loads(storage.read_bytes(f"{out}/segmented/summary.json"))["volumes_ok"] == 7
