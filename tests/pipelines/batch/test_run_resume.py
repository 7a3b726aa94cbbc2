"""`pipelines.batch.run`: fault tolerance of the labeling job (issues 5, 16), on real local Ray with local files.

(a) the driver killed mid-job, then the same job rerun; (b) an inference actor dying on its
first batch; (b') a poison input that kills its actor every time; (c) a worker node removed
from a two-node `ray.cluster_utils.Cluster` mid-job (rerun if the job fails). (a) and (c) run
in subprocesses so each has its own Ray instance; (b) uses this module's in-process Ray.
Every wait is bounded. Each ends with exactly one row per input id in whole part files.
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
from pipelines.batch.listing import stable_id
from pipelines.batch.predictor import CRASH_ENV, LabelPredictor
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


def check_exactly_once(out: Path, n: int, all_ok: bool = True) -> list[dict]:
    """Every published part file is whole and valid; together they hold one row per input id."""
    rows = []
    for name in parts(out):
        table = pq.read_table(out / name)  # a partial file would not parse
        assert table.schema.equals(OUTPUT_SCHEMA), name
        rows += table.to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == n
    assert {os.path.basename(r["uri"]) for r in rows} == {f"scene{i:02d}.png" for i in range(n)}
    assert all(r["status"] == "ok" for r in rows) or not all_ok
    assert not [p for p in out.glob("*.parquet") if not p.name.startswith("part-")]
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
    assert before and (out / "_restore" / "job.json").exists()
    seen = {r["id"] for name in before for r in pq.read_table(out / name).to_pylist()}  # each file parses whole
    assert seen

    done = subprocess.run(label_cmd(images, out), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    # Rows of a part file whose checkpoint was still pending are redone (Ray deletes that file first).
    assert summary["rows_before"] <= len(seen)
    assert summary["rows_before"] + summary["run_rows"] == N_IMAGES
    assert summary["rows_total"] == summary["rows_ok"] == N_IMAGES
    check_exactly_once(out, N_IMAGES)
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
    assert (summary.rows_ok, summary.rows_error, summary.run_rows) == (N_IMAGES, 0, N_IMAGES)
    assert str(marker.read_text()) not in {r["worker"].rsplit(":", 1)[1] for r in rows}  # a new process did them


def crashes_on(row_id: str) -> type:
    """A LabelPredictor whose process exits whenever it is about to generate `row_id` (the test-only hook)."""

    class CrashesOn(LabelPredictor):
        def __init__(self, job):
            os.environ[CRASH_ENV] = row_id  # in the actor's own process, set again on every restart
            super().__init__(job)

    return CrashesOn


def test_poison_input_that_kills_its_actor_ends_as_one_error_row(ray_cpu, images, tmp_path, monkeypatch):
    poison = str(images / "scene03.png")
    monkeypatch.setattr(graph, "LabelPredictor", crashes_on(stable_id(poison)))
    out = tmp_path / "out"
    job = LabelJob(kind="images", input=str(images), output=str(out), model=MODEL, method="divprune",
                   budget=8, batch_size=4, max_new_tokens=2, workers=(1, 1), max_task_retries=6)
    summary = run(job)
    rows = {r["uri"]: r for r in check_exactly_once(out, N_IMAGES, all_ok=False)}
    bad = rows.pop(poison)
    assert bad["status"] == "error" and poison in bad["error"] and "died 2 times" in bad["error"], bad["error"]
    assert all(r["status"] == "ok" for r in rows.values())  # its batch-mates too
    assert (summary.rows_ok, summary.rows_error) == (N_IMAGES - 1, 1)
    journals = list((out / "_restore" / "journal").glob("*.json"))
    assert journals and any(json.loads(p.read_text())["deaths"] for p in journals)


# ---------------------------------------------------------------------------- (c) two nodes

TWO_NODES = """
import json, sys, threading, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from pipelines.batch.config import LabelJob
from pipelines.batch.run import run

out = Path(sys.argv[2])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
worker = cluster.add_node(num_cpus=2)
removed = []

def remove_worker_after_first_part():
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(out.glob("part-*.parquet")):
        time.sleep(0.05)
    cluster.remove_node(worker)  # the node dies mid-job
    removed.append(len(list(out.glob("part-*.parquet"))))
    cluster.add_node(num_cpus=2)  # what an autoscaler does: a replacement node

try:
    ray.init(address=cluster.address, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    cluster.wait_for_nodes(timeout=60)
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    job = LabelJob(kind="images", input=sys.argv[1], output=sys.argv[2], model="random:llava-tiny",
                   method="divprune", budget=8, shard_size=2, batch_size=2, max_new_tokens=4, workers=(1, 1))
    killer = threading.Thread(target=remove_worker_after_first_part, daemon=True)
    killer.start()
    attempts = 0
    while True:
        attempts += 1
        try:
            summary = run(job)
            break
        except Exception as err:  # the job may fail with the node; then it is rerun
            print("attempt failed:", type(err).__name__, str(err)[:300], file=sys.stderr)
            killer.join(timeout=120)
            if attempts >= 3:
                raise
    killer.join(timeout=120)
    print(json.dumps({"nodes": nodes, "removed_after_parts": removed, "attempts": attempts,
                      **summary.model_dump()}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_worker_node_removed_mid_job_then_exactly_once(images, tmp_path):
    """The job on two nodes loses its worker node after the first part file; it finishes, or (if it fails or
    stalls) it is stopped and rerun; either way the output ends with exactly one row per input id."""
    out = tmp_path / "out"
    log = tmp_path / "two-nodes.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(TWO_NODES), str(images), str(out)], cwd=ROOT,
                                env=ENV, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:  # stalled after losing the node: stop it (and its cluster)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    text = log.read_text()
    assert parts(out), text[-3000:]  # the node was removed after the first part file
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        done = subprocess.run(label_cmd(images, out), cwd=ROOT, env=ENV, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
    else:
        result = json.loads(lines[-1])
        assert result["nodes"] == 2 and result["removed_after_parts"], result
    assert (result["rows_ok"], result["rows_error"], result["rows_total"]) == (N_IMAGES, 0, N_IMAGES)
    check_exactly_once(out, N_IMAGES)
