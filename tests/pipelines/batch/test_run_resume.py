"""`pipelines.batch.run`: fault tolerance of the labeling job (issue 5), on real local Ray with local files.

(a) the driver killed mid-job, then the same job rerun; (b) an inference actor dying on its
first batch; (c) a two-node `ray.cluster_utils.Cluster`. (a) and (c) run in subprocesses so
each has its own Ray instance; (b) uses this module's in-process Ray. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.batch import graph
from pipelines.batch.config import LabelJob
from pipelines.batch.predictor import LabelPredictor
from pipelines.batch.run import run
from pipelines.rows import OUTPUT_SCHEMA
from restore.zoo.world import scene_image

pytestmark = [pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[3]
MODEL = "random:llava-tiny"
N_IMAGES = 10
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
ENV.pop("RAY_ADDRESS", None)  # each subprocess starts its own Ray


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume-corpus")
    for i in range(N_IMAGES):
        img = scene_image(100 + i, 48)
        img.save(root / f"scene{i:02d}.png")
    return root


def parts(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("part-*.parquet"))


def check_exactly_once(out: Path, n: int) -> list[dict]:
    """Every published part file is whole and valid; together they hold one row per input id."""
    rows = []
    for name in parts(out):
        table = pq.read_table(out / name)  # a partial file would not parse
        assert table.schema.equals(OUTPUT_SCHEMA), name
        rows += table.to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == n
    assert {os.path.basename(r["uri"]) for r in rows} == {f"scene{i:02d}.png" for i in range(n)}
    assert all(r["status"] == "ok" for r in rows)
    return rows


def label_cmd(images: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.label", "images", "--input", str(images), "--output", str(out),
            "--model", MODEL, "--method", "divprune", "--budget", "8", "--shard-size", "2", "--batch-size", "2",
            "--max-new-tokens", "4"]


# ---------------------------------------------------------------------------- (a) driver killed


def test_driver_killed_after_first_part_then_rerun_finishes_exactly_once(images, tmp_path):
    out = tmp_path / "out"
    # A session of its own, so killing the group ends the driver and the Ray instance it started.
    proc = subprocess.Popen(label_cmd(images, out), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (out.exists() and parts(out)):
            if proc.poll() is not None and not parts(out):  # (it may have finished between the two looks)
                pytest.fail(f"the job exited ({proc.returncode}) before publishing a part:\n"
                            + proc.stdout.read().decode()[-3000:])
            assert time.monotonic() < deadline, "no part file within 180 s"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    before = parts(out)
    assert before and (out / "_JOB.json").exists()
    assert not (out / "_SUMMARY.json").exists() or len(before) == N_IMAGES // 2  # killed before the end, usually
    check_exactly_once_partial = {r["id"] for name in before for r in pq.read_table(out / name).to_pylist()}
    assert len(check_exactly_once_partial) == 2 * len(before)  # each published shard is whole (2 rows)

    done = subprocess.run(label_cmd(images, out), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["shards_skipped"] == len(before)
    assert summary["shards_written"] == N_IMAGES // 2 - len(before)
    assert summary["rows_total"] == summary["rows_ok"] == N_IMAGES
    rows = check_exactly_once(out, N_IMAGES)
    assert check_exactly_once_partial <= {r["id"] for r in rows}
    assert parts(out) == [f"part-{k:05d}.parquet" for k in range(N_IMAGES // 2)]
    # Leftovers of the killed write (if any) are hidden names that `part-*.parquet` never matches.
    assert all(n.startswith((".", "_", "part-")) for n in os.listdir(out))


# ---------------------------------------------------------------------------- (b) actor killed


def dies_once(marker: str) -> type:
    """A LabelPredictor whose process exits on its first batch, once across restarts (marker file)."""

    class DiesOnce(LabelPredictor):
        def __call__(self, batch_):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return super().__call__(batch_)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(1)

    return DiesOnce


@pytest.fixture(scope="module")
def ray_cpu():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def test_inference_actor_dies_on_first_batch_and_job_still_labels_each_input_once(ray_cpu, images, tmp_path,
                                                                                    monkeypatch):
    marker = tmp_path / "died"
    monkeypatch.setattr(graph, "LabelPredictor", dies_once(str(marker)))
    job = LabelJob(kind="images", input=str(images), output=str(tmp_path / "out"), model=MODEL, method="divprune",
                   budget=8, shard_size=3, batch_size=2, max_new_tokens=4, workers=(1, 1))
    summary = run(job)
    assert marker.exists()  # the actor did die
    rows = check_exactly_once(tmp_path / "out", N_IMAGES)
    assert (summary.rows_ok, summary.rows_error, summary.shards_written) == (N_IMAGES, 0, 4)
    assert str(marker.read_text()) not in {r["worker"].rsplit(":", 1)[1] for r in rows}  # a new process did them


# ---------------------------------------------------------------------------- (c) two nodes

TWO_NODES = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from pipelines.batch.config import LabelJob
from pipelines.batch.run import run

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
try:
    ray.init(address=cluster.address, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    cluster.wait_for_nodes(timeout=60)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    job = LabelJob(kind="images", input=sys.argv[1], output=sys.argv[2], model="random:llava-tiny",
                   method="divprune", budget=8, shard_size=4, batch_size=2, max_new_tokens=3, workers=(1, 1))
    summary = run(job)
    print(json.dumps({"nodes": len(nodes), "cpus": ray.cluster_resources().get("CPU"), **summary.model_dump()}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_two_node_cluster_runs_a_labeling_job(images, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(TWO_NODES), str(images), str(out)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["nodes"], result["cpus"]) == (2, 2.0)
    assert (result["rows_ok"], result["rows_error"], result["shards_written"]) == (N_IMAGES, 0, 3)
    check_exactly_once(out, N_IMAGES)
