"""cluster/: the manifests parse, pin the Ray version of pyproject.toml, name the project's image,
and every entrypoint is a `unet` command whose options parse with that job's own parser."""
from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from unet_core.segmentation.sizing import predictor_counts

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
RAYJOBS = sorted(CLUSTER.glob("rayjob-*.yaml"))


def ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [re.fullmatch(r"ray\[[^\]]*\]==([\d.]+)", d.replace(" ", "")) for d in deps if d.startswith("ray")]
    return pin.group(1)


def parse_unet_command(command: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == "unet", command
    job = argv[1]
    parser = importlib.import_module(f"jobs.{job}").build_parser()
    parser.exit_on_error = False
    parser.parse_args(argv[2:])  # SystemExit / ArgumentError fails the test with the reason


def test_there_are_manifests_for_training_and_segmentation():
    assert {p.name for p in RAYJOBS} == {"rayjob-train.yaml", "rayjob-segment.yaml"}


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_pins_ray_names_the_image_and_has_a_real_entrypoint(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray_pin()
    assert cluster["authOptions"] == {"mode": "token"}
    assert spec["shutdownAfterJobFinishes"] is True
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            assert container["image"].endswith(f"-ray{ray_pin()}"), container["image"]
    parse_unet_command(spec["entrypoint"])
    yaml.safe_load(spec["runtimeEnvYAML"])


def test_training_manifest_has_a_gpu_for_every_worker():
    doc = yaml.safe_load((CLUSTER / "rayjob-train.yaml").read_text())
    argv = shlex.split(doc["spec"]["entrypoint"])
    train = importlib.import_module("jobs.train")
    args = train.parse_args(train.build_parser(), argv[2:])  # --workers becomes a WorkerRange there
    (gpu,) = [g for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    gpus = gpu["minReplicas"] * int(gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert not args.workers.elastic and args.workers.max * args.gpus_per_worker == gpus
    assert args.storage.startswith("s3://")  # checkpoints on more than one node need shared storage


def test_segmentation_manifest_autoscales_gpu_and_cpu_groups():
    doc = yaml.safe_load((CLUSTER / "rayjob-segment.yaml").read_text())
    cluster = doc["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu_limits = groups["gpu-predict"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" in gpu_limits
    assert "nvidia.com/gpu" not in groups["cpu-decode"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    args = importlib.import_module("jobs.segment").build_parser().parse_args(shlex.split(doc["spec"]["entrypoint"])[2:])
    low, high = predictor_counts(args.concurrency, args.min_predictors, args.max_predictors)
    assert args.num_gpus == 1 and low <= high <= groups["gpu-predict"]["maxReplicas"]
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    # small task results stay out of the driver's memory on every node (docs/design.md)
    pods = [cluster["headGroupSpec"], *groups.values()]
    for pod in pods:
        env = {e["name"]: e["value"] for e in pod["template"]["spec"]["containers"][0].get("env", [])}
        assert env.get("RAY_max_direct_call_object_size") == "1024"


def test_launcher_yaml_pins_the_image_and_starts_ray_with_token_auth():
    doc = yaml.safe_load((CLUSTER / "launcher-aws-gpu.yaml").read_text())
    assert doc["docker"]["image"].endswith(f"-ray{ray_pin()}")
    assert doc["head_node_type"] in doc["available_node_types"]
    for command in doc["head_start_ray_commands"][1:] + doc["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in command and "ray start" in command
    for line in doc.get("file_mounts", {}):
        assert "auth_token" in line


def test_dockerfile_starts_from_the_pinned_official_ray_gpu_image():
    text = (CLUSTER / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert base == f"rayproject/ray:{ray_pin()}-py311-gpu"
    assert f"ray.__version__ == '{ray_pin()}'" in text
    assert ".venv" in (CLUSTER / "Dockerfile.dockerignore").read_text().split()

