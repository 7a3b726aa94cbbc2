"""`pipelines.batch.run`: offline labeling on Ray Data (issue 5): real local Ray, real S3 (moto over HTTP on loopback).

The moto server and the AWS_* variables exist before ray.init, and travel in the
runtime_env, so Ray workers read and write the same S3 the driver does.
"""

from __future__ import annotations

import io
import json
import os

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batch import run as batch_run
from pipelines.batch.config import JobConfigError, LabelJob
from pipelines.batch.run import run
from pipelines.media.decode import SourceError
from pipelines.rows import OUTPUT_SCHEMA
from restore.zoo.world import scene_image
from tests.helpers.videos import clip

pytestmark = [pytest.mark.ray, pytest.mark.s3]

MODEL = "random:llava-tiny"  # 24 px images, 4 px patches: 36 visual tokens per image or frame
GOOD_IMAGES = 5
BAD_IMAGES = {"corrupt.jpg": "not a decodable image", "empty.png": "empty file", "notes.png": "cannot identify image"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    images = root / "images"
    images.mkdir()
    for i in range(GOOD_IMAGES):
        img = scene_image(i, 48)
        img.save(images / (f"scene{i}.png" if i % 2 == 0 else f"scene{i}.jpg"))
    rng = np.random.default_rng(0)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.integers(0, 255, 300, dtype=np.uint8).tobytes())
    (images / "empty.png").write_bytes(b"")
    (images / "notes.png").write_text("this is a text file with an image name\n")
    (images / "readme.txt").write_text("not listed: wrong extension\n")
    videos = root / "videos"
    videos.mkdir()
    for i in range(3):
        (videos / f"clip{i}.mp4").write_bytes(clip(i))
    good = clip(9)
    (videos / "broken.mp4").write_bytes(good[: len(good) // 3])
    return root


@pytest.fixture(scope="module")
def s3(corpus):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("corpus")
        fs.mkdir("out")
        fs.put(str(corpus / "images") + "/", "corpus/images/", recursive=True)
        fs.put(str(corpus / "videos") + "/", "corpus/videos/", recursive=True)
        fs.pipe_file("corpus/questions.jsonl", b'{"question": "what is moving ?"}\n{"question": "how many are there ?"}\n')
        yield env
    server.stop()


@pytest.fixture(scope="module")
def ray_local(s3):
    import ray

    # Workers get the S3 settings from the runtime_env; one torch thread each keeps 2 cores usable.
    env_vars = {**s3, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    yield
    ray.shutdown()


def read_output(uri: str) -> pa.Table:
    fs, path = fsspec.core.url_to_fs(uri)
    fs.invalidate_cache()
    parts = sorted(fs.glob(f"{path}/part-*.parquet"))
    return pa.concat_tables([pq.read_table(io.BytesIO(fs.cat_file(p))) for p in parts])


def job(**kw) -> LabelJob:
    base = dict(model=MODEL, max_new_tokens=3, batch_size=4, workers=(1, 1))
    return LabelJob(**{**base, **kw})


# ---------------------------------------------------------------------------- images, local, caption


@pytest.fixture(scope="module")
def local_images(ray_local, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "images"
    j = job(kind="images", input=str(corpus / "images"), output=str(out), method="divprune", budget=8, shard_size=3)
    built = []

    def keep(*a, **k):
        built.append(build(*a, **k))
        return built[-1]

    build = batch_run.build_dataset
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch_run, "build_dataset", keep)
        summary = run(j)
    return j, summary, built[0].stats()


def test_images_local_caption_schema_and_error_rows(local_images, corpus):
    j, summary, _ = local_images
    table = read_output(j.output)
    assert table.schema.equals(OUTPUT_SCHEMA)
    assert table.num_rows == GOOD_IMAGES + len(BAD_IMAGES)  # readme.txt is not an image name
    assert len(set(table["id"].to_pylist())) == table.num_rows
    rows = {os.path.basename(r["uri"]): r for r in table.to_pylist()}
    for name, cause in BAD_IMAGES.items():
        r = rows[name]
        assert r["status"] == "error" and name in r["error"] and cause in r["error"], r["error"]
        assert r["answer"] is None and r["kept_tokens"] is None
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == GOOD_IMAGES
    for r in ok:
        assert r["error"] is None and isinstance(r["answer"], str)
        assert (r["visual_tokens"], r["kept_tokens"]) == (36, 8)
        assert r["task"] == "caption" and r["prompt"] == "describe the image ." and r["method"] == "divprune"
        assert r["budget"] == 8.0 and r["restore"] is True and r["model"] == MODEL
        assert r["prefill_ms"] > 0 and 1 <= r["generated_tokens"] <= 3 and r["worker"] and r["finished_at"]
    assert sorted(n for n in os.listdir(j.output) if not n.startswith("part-")) == ["_restore"]
    assert len([n for n in os.listdir(j.output) if n.endswith(".parquet")]) == summary.parts_total >= 1
    on_disk = json.loads((corpus.parent / j.output / "_restore" / "summary.json").read_text())
    assert on_disk == json.loads(summary.model_dump_json())
    assert (summary.rows_ok, summary.rows_error, summary.rows_before, summary.run_rows) == (5, 3, 0, 8)
    assert summary.skipped_by_extension == 1  # readme.txt
    assert summary.mean_kept_tokens == 8 and summary.mean_visual_tokens == 36
    assert summary.prefill_speedup_est > 1 and summary.items_per_s > 0


def test_decode_runs_in_its_own_cpu_stage(local_images):
    # Fused into the actor, decode would run serially with generation (DESIGN §7).
    _, _, stats = local_images
    assert "MapBatches(decode_batch)" in stats and "MapBatches(LabelPredictor)" in stats
    assert "decode_batch)->MapBatches(LabelPredictor)" not in stats, stats


def test_output_reads_as_a_parquet_dataset_with_pandas_and_pyarrow(local_images):
    import pandas as pd
    import pyarrow.dataset as pads

    j, summary, _ = local_images
    # _restore/ (marker, summary, checkpoint) starts with "_": dataset readers skip it.
    assert pads.dataset(j.output).count_rows() == summary.rows_total
    assert len(pd.read_parquet(j.output)) == summary.rows_total
    assert pq.read_table(j.output).schema.equals(OUTPUT_SCHEMA)


def test_rerun_labels_nothing_then_only_new_files(local_images, corpus, tmp_path):
    j, _, _ = local_images
    before = read_output(j.output)
    parts = sorted(n for n in os.listdir(j.output) if n.startswith("part-"))
    again = run(j)
    assert (again.run_rows, again.rows_before, again.rows_total) == (0, 8, 8)
    assert sorted(n for n in os.listdir(j.output) if n.startswith("part-")) == parts
    # Incremental labeling: a new file in the input is the only row the next run labels.
    new = corpus / "images" / "late.png"
    scene_image(42, 48).save(new)
    try:
        grown = run(j)
    finally:
        new.unlink()
    assert (grown.run_rows, grown.rows_before, grown.rows_total) == (1, 8, 9)
    after = read_output(j.output)
    ids = after["id"].to_pylist()
    assert len(ids) == len(set(ids)) == before.num_rows + 1
    assert {r["uri"] for r in after.to_pylist()} - {r["uri"] for r in before.to_pylist()} == {str(new)}
    assert not [n for n in os.listdir(j.output) if ".tmp" in n]


def test_ctrl_c_says_what_was_published_and_how_to_resume(local_images, monkeypatch, capsys):
    from jobs.label import main

    j, _, _ = local_images
    held = read_output(j.output).num_rows

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_run, "build_dataset", interrupted)
    with pytest.raises(batch_run.JobInterrupted, match=f"{j.output} holds {held} labeled rows.*same"):
        run(j)
    argv = ["images", "--input", j.input, "--output", j.output, "--model", MODEL, "--method", "divprune",
            "--budget", "8", "--max-new-tokens", "3"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "run the same command again" in err and "Traceback" not in err


def test_rerun_with_a_different_job_on_the_same_output_is_refused(local_images, monkeypatch):
    j, _, _ = local_images
    monkeypatch.setattr(batch_run, "build_dataset", lambda *a, **k: pytest.fail("must fail before Ray"))
    with pytest.raises(JobConfigError, match="different job.*method"):
        run(j.model_copy(update={"method": "visionzip"}))


# ---------------------------------------------------------------------------- S3


def test_videos_s3_vqa_with_questions_file(ray_local):
    j = job(kind="videos", input="s3://corpus/videos", output="s3://out/videos-vqa", task="vqa",
            questions="s3://corpus/questions.jsonl", method="random", budget=4, frames=4, shard_size=4)
    summary = run(j)
    table = read_output(j.output)
    assert table.schema.equals(OUTPUT_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == 4 * 2 and len({r["id"] for r in rows}) == 8  # 4 videos x 2 questions
    assert {r["prompt"] for r in rows} == {"what is moving ?", "how many are there ?"}
    bad = [r for r in rows if r["uri"].endswith("broken.mp4")]
    assert len(bad) == 2 and all(r["status"] == "error" and "broken.mp4" in r["error"] for r in bad)
    assert all("not a decodable video" in r["error"] or "no video stream" in r["error"] for r in bad)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 6 and all(r["uri"].startswith("s3://corpus/videos/clip") for r in ok)
    assert all((r["visual_tokens"], r["kept_tokens"]) == (4 * 36, 4 * 4) for r in ok)  # budget is per frame
    assert (summary.rows_ok, summary.rows_error, summary.run_rows) == (6, 2, 8)
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert json.loads(fs.cat_file("out/videos-vqa/_restore/summary.json"))["rows_total"] == 8
    assert fs.glob("out/videos-vqa/_restore/checkpoint/*.parquet")  # Ray Data's checkpoint, on S3 too


def test_images_s3_manifest_with_ids_and_questions(ray_local, tmp_path):
    fs = fsspec.filesystem("s3")
    lines = [
        {"id": "img-a", "uri": "s3://corpus/images/scene0.png", "question": "where is the circle ?"},
        {"id": "img-b", "uri": "images/scene1.jpg", "question": "how many are there ?"},  # relative to the manifest
        {"id": "img-c", "uri": "s3://corpus/images/notes.png", "question": "what is this ?"},
    ]
    fs.pipe_file("corpus/manifest.jsonl", "\n".join(json.dumps(x) for x in lines).encode())
    j = job(kind="images", input="s3://corpus/manifest.jsonl", output=str(tmp_path / "out"), task="vqa",
            method="visionzip", budget=9, restore=False)
    summary = run(j)
    rows = {r["id"]: r for r in read_output(j.output).to_pylist()}
    assert sorted(rows) == ["img-a", "img-b", "img-c"]
    assert rows["img-b"]["uri"] == "s3://corpus/images/scene1.jpg"
    assert rows["img-a"]["prompt"] == "where is the circle ?" and rows["img-b"]["prompt"] == "how many are there ?"
    assert rows["img-a"]["kept_tokens"] == 9 and rows["img-a"]["restore"] is False
    assert rows["img-c"]["status"] == "error" and "notes.png" in rows["img-c"]["error"]
    assert (summary.rows_ok, summary.rows_error) == (2, 1)


def test_a_manifest_with_a_repeated_id_is_refused_by_name_and_labels_nothing(ray_local, tmp_path):
    lines = [{"uri": "s3://corpus/images/scene0.png", "question": "where is the circle ?"},
             {"uri": "s3://corpus/images/scene0.png", "question": "how many are there ?"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines))
    j = job(kind="images", input=str(manifest), output=str(tmp_path / "out"), task="vqa")
    with pytest.raises(SourceError, match="^manifest .*m.jsonl lines 1 and 2 share the id") as err:
        run(j)
    assert "ray::" not in str(err.value)  # the message, not Ray's remote traceback
    assert not list((tmp_path / "out").glob("part-*.parquet"))


# ---------------------------------------------------------------------------- command line


def test_cli_label_with_config_file_and_overrides(ray_local, corpus, tmp_path, capsys):
    from jobs.cli import main

    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"kind: videos\ninput: {corpus / 'videos'}/clip*.mp4\nmodel: {MODEL}\nfps: 2\n"
                   "max_new_tokens: 2\nshard_size: 8\nmethod: nonexistent\n")
    out = tmp_path / "out"
    code = main(["label", "videos", "--config", str(cfg), "--output", str(out), "--method", "pool", "--budget", "4",
                 "--limit", "2", "--workers", "1,1", "--batch-size", "2"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["rows_ok"], summary["rows_total"], summary["method"]) == (2, 2, "pool")
    rows = read_output(str(out)).to_pylist()
    assert [os.path.basename(r["uri"]) for r in sorted(rows, key=lambda r: r["uri"])] == ["clip0.mp4", "clip1.mp4"]
    # 1.5 s clips sampled at 2 fps: frames at 0, 0.5 and 1.0 s.
    assert all(r["visual_tokens"] == 3 * 36 and r["kept_tokens"] == 3 * 4 for r in rows)
    assert all(r["prompt"] == "describe the video ." for r in rows)


# ---------------------------------------------------------------------------- fails before Ray


def test_bad_configs_fail_before_any_ray_work(corpus, tmp_path, s3, monkeypatch, capsys):
    monkeypatch.setattr(batch_run, "build_dataset", lambda *a, **k: pytest.fail("must fail before Ray"))
    out = str(tmp_path / "out")
    images = str(corpus / "images")
    with pytest.raises(JobConfigError, match=f"input {tmp_path / 'absent'} does not exist"):
        run(job(kind="images", input=str(tmp_path / "absent"), output=out))
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobConfigError, match=f"input {tmp_path / 'empty'} lists no images files"):
        run(job(kind="images", input=str(tmp_path / "empty"), output=out))
    with pytest.raises(JobConfigError, match="input s3://corpus/nothing-here does not exist"):
        run(job(kind="videos", input="s3://corpus/nothing-here", output=out))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(JobConfigError, match=f"output {blocker / 'out'} is not writable"):
        run(job(kind="images", input=images, output=str(blocker / "out")))
    with pytest.raises(JobConfigError, match="output s3://no-such-bucket/x is not writable"):
        run(job(kind="images", input=images, output="s3://no-such-bucket/x"))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        job(kind="images", input=images, output=out, method="nope")
    with pytest.raises(JobConfigError, match="task vqa needs a question"):
        run(job(kind="images", input=images, output=out, task="vqa"))
    with pytest.raises(JobConfigError, match=f"model {tmp_path / 'no-model'} does not exist"):
        run(job(kind="images", input=images, output=out, model=str(tmp_path / "no-model")))
    assert not os.path.exists(out) or not [n for n in os.listdir(out) if not n.startswith("_probe")]

    from jobs.label import main

    assert main(["images", "--input", str(tmp_path / "absent"), "--output", out, "--model", MODEL]) == 2
    assert f"input {tmp_path / 'absent'} does not exist" in capsys.readouterr().err
    assert main(["images", "--input", images, "--output", out, "--model", MODEL, "--method", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
