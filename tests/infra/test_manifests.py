"""infra/: the KubeRay RayJob manifest and the local S3 script (structure only: no cluster, no S3)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from jobs.label import build_parser, job_from_args
from pipelines.batch.config import LabelJob

INFRA = Path(__file__).resolve().parents[2] / "infra"


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load((INFRA / "rayjob.yaml").read_text())


def containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def test_rayjob_kind_and_cluster_shape(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no labeling work on the head
    assert all("nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}) for c in containers(head["template"]))
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    for c in containers(gpu["template"]):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    images = {c["image"] for t in [head["template"], gpu["template"], spec["submitterPodTemplate"]]
              for c in containers(t)}
    assert images == {"IMAGE_PLACEHOLDER"}  # one image everywhere, documented at the top of the file


def test_rayjob_s3_credentials_come_from_the_secret(rayjob):
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in pods:
        for c in containers(template):
            assert {"secretRef": {"name": "restore-s3"}} in c["envFrom"], c["name"]
            assert not [e for e in c.get("env", []) if "value" in e and e["name"].startswith("AWS_")]
    (submitter,) = containers(spec["submitterPodTemplate"])
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in submitter["env"]}
    assert set(refs) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(r["name"] == "restore-s3" and r["key"] == name for name, r in refs.items())


def test_rayjob_entrypoint_parses_into_a_valid_label_job(rayjob, monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.label"]
    job = job_from_args(build_parser().parse_args(argv[3:]))  # constructs only: nothing touches S3
    assert isinstance(job, LabelJob)
    assert (job.kind, job.task, job.method, job.budget, job.restore) == ("images", "caption", "divprune", 64, True)
    assert job.input.startswith("s3://") and job.output.startswith("s3://") and job.model.startswith("s3://")
    assert job.gpus_per_worker == 1 and job.workers == (1, 4)
    (gpu,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert gpu["maxReplicas"] >= job.workers[1]  # one GPU pod per inference actor at the pool's largest


def test_s3_local_script_is_executable_and_documents_itself():
    script = INFRA / "s3-local"
    assert script.stat().st_mode & 0o111
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--background" in out.stdout
    bad = subprocess.run([str(script), "--nope"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


@pytest.mark.s3
def test_s3_local_background_serves_s3_and_writes_its_pid(tmp_path, monkeypatch):
    import os
    import signal
    import socket

    import fsspec

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pid_file = tmp_path / "s3.pid"
    out = subprocess.run([str(INFRA / "s3-local"), str(port), "--background", "--pid-file", str(pid_file),
                          "--log", str(tmp_path / "s3.log")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(pid_file.read_text())
    try:
        env = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines())
        assert env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}" and env["AWS_ACCESS_KEY_ID"] == "testing"
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("probe")
        fs.pipe_file("probe/x", b"hello")
        assert fs.cat_file("probe/x") == b"hello"
    finally:
        os.kill(pid, signal.SIGTERM)


@pytest.mark.parametrize("source", ["serve.yaml", "rayservice.yaml"])
def test_serve_configs_validate_against_the_settings(source):
    from ray.serve.schema import ServeDeploySchema

    from pipelines.serve.settings import DeploymentSettings, ServeSettings

    doc = yaml.safe_load((INFRA / source).read_text())
    if source == "rayservice.yaml":
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
        cluster = doc["spec"]["rayClusterConfig"]
        assert cluster["rayVersion"] == "2.60.0" and cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        (gpu,) = cluster["workerGroupSpecs"]
        config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    else:
        config = doc
        assert config["http_options"]["host"] == "127.0.0.1"
    ServeDeploySchema(**config)  # Serve's own schema of the file
    (app,) = config["applications"]
    assert app["import_path"] == "pipelines.serve:app_builder"
    from ray._common.utils import import_attr

    assert callable(import_attr(app["import_path"]))  # the path Serve imports resolves
    settings = ServeSettings(**app["args"]["settings"])
    dep = DeploymentSettings(**app["args"]["deployment"])
    assert settings.reduction.reduces and dep.min_replicas <= dep.max_replicas
    if source == "rayservice.yaml":
        assert dep.num_gpus == 1 and gpu["maxReplicas"] >= dep.max_replicas
        for c in containers(gpu["template"]):
            assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert {"secretRef": {"name": "restore-api"}} in c["envFrom"]
