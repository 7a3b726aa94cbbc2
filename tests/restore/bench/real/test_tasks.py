"""Each benchmark read from tiny Parquet in its published schema, prompted and scored: a perfect oracle
scores 100% of what the metric allows, a constant reply what the metric gives by hand."""

import pytest

from restore.bench.real.data import Source, TaskData, select
from restore.bench.real.tasks import LETTER_ANSWER, PAPER_TASKS, SHORT_ANSWER, task_specs
from tests.restore.bench.real import fixtures

SPECS = task_specs()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return fixtures.build(tmp_path_factory.mktemp("bench-data"))


def load(data_dir, task, root=None):
    return TaskData(SPECS[task], Source(root or str(data_dir)))


PERFECT = {"mme": 600.0}  # MME: 200 per category (acc 100 + acc+ 100), three categories in the fixture


def test_every_paper_task_has_a_spec():
    assert set(PAPER_TASKS) == set(SPECS) == set(fixtures.BUILDERS)


@pytest.mark.parametrize("task", sorted(fixtures.BUILDERS))
def test_oracle_scores_full_marks(data_dir, task):
    data = load(data_dir, task)
    assert len(data.examples) == fixtures.QUESTIONS[task]
    score = SPECS[task].score(data.examples, [fixtures.oracle(e) for e in data.examples])
    assert score["score"] == pytest.approx(PERFECT.get(task, 100.0))


@pytest.mark.parametrize("task, reply", sorted(fixtures.HAND))
def test_constant_reply_scores_by_hand(data_dir, task, reply):
    data = load(data_dir, task)
    score = SPECS[task].score(data.examples, [reply] * len(data.examples))
    assert score["score"] == pytest.approx(fixtures.HAND[task, reply])


def test_mmbench_reports_plain_and_circular(data_dir):
    data = load(data_dir, "mmbench")
    out = SPECS["mmbench"].score(data.examples, ["A"] * 3)
    assert out["circular_eval"] and out["accuracy"] == pytest.approx(fixtures.MMBENCH_PLAIN_A)
    assert out["circular"] == 0.0


def test_prompts_follow_llava_1_5(data_dir):
    pope = load(data_dir, "pope").examples[0]
    assert pope.prompt == f"Is there a dog in the image 0?\n{SHORT_ANSWER}" and pope.target == "yes"
    sqa = load(data_dir, "sqa_img").examples[0]
    assert sqa.prompt == f"Context: A hint.\nWhich 0?\nA. cat\nB. dog\n{LETTER_ANSWER}" and sqa.target == "A"
    mmb = load(data_dir, "mmbench").examples
    assert mmb[0].prompt == f"Which animal?\nA. cat\nB. dog\n{LETTER_ANSWER}"  # 'nan' hint and empty C, D left out
    assert mmb[2].prompt.startswith("Look at the sky.\nIs it day?\nA. yes\nB. no\n")
    assert [e.meta["group"] for e in mmb] == [0, 0, 1]
    seed = load(data_dir, "seed").examples[0]
    assert seed.prompt == f"Q0?\nA. a0\nB. b0\nC. c0\nD. d0\n{LETTER_ANSWER}" and seed.options == ("a0", "b0", "c0", "d0")
    text = load(data_dir, "textvqa").examples[0]
    assert text.prompt == f"what is written 0?\nReference OCR token: nokia, 3310\n{SHORT_ANSWER}"
    no_ocr = TaskData(task_specs(textvqa_ocr=False)["textvqa"], Source(str(data_dir))).examples[0]
    assert "OCR" not in no_ocr.prompt
    mme = load(data_dir, "mme").examples
    assert mme[0].meta == {"category": "existence", "image": "existence/e1.jpg"} and mme[0].target == "yes"


def test_files_of_the_preferred_config_and_split_only(data_dir):
    assert [e.id.split("#")[0] for e in load(data_dir, "mmbench").examples] == ["en/dev-00000-of-00001.parquet"] * 3
    assert {e.id.split("#")[0] for e in load(data_dir, "textvqa").examples} == {"data/validation-00000-of-00001.parquet"}
    gqa = load(data_dir, "gqa")
    assert len(gqa.files) == 1 and len(gqa.table_files) == 1
    files = ["r/a/dev-0.parquet", "r/a/test-0.parquet", "r/b/dev-0.parquet"]
    rels = ["a/dev-0.parquet", "a/test-0.parquet", "b/dev-0.parquet"]
    assert select(files, rels, ["b", "a"], ["dev"]) == ["r/b/dev-0.parquet"]
    assert select(files, rels, [], ["test"]) == ["r/a/test-0.parquet"]
    assert select(files, rels, ["zz"], ["val"]) == files  # nothing preferred matches: every file


def test_gqa_image_table_is_found_by_its_schema_in_a_flat_folder(tmp_path, data_dir):
    flat = tmp_path / "gqa"
    flat.mkdir()
    for name in ("testdev_balanced_instructions", "testdev_balanced_images"):
        (flat / f"{name}.parquet").write_bytes((data_dir / "gqa" / name / "testdev-00000-of-00001.parquet").read_bytes())
    data = load(data_dir, "gqa", root=str(tmp_path))
    assert [e.target for e in data.examples] == ["yes", "no", "left", "table"]
    assert data.table_files == [str(flat / "testdev_balanced_images.parquet")]
    assert len(data.images(data.examples)) == 4


def test_images_come_back_decoded_in_any_layout(data_dir):
    for task in fixtures.BUILDERS:
        data = load(data_dir, task)
        images = data.images(data.examples[::-1])
        assert set(images) == {e.id for e in data.examples}
        assert all(im.mode == "RGB" and im.size == (16, 16) for im in images.values())
    # SEED-Bench clips: the middle frame, as LLaVA-1.5 reads them.
    data = load(data_dir, "seed")
    video = data.examples[2]
    assert video.meta["data_type"] == "video"
    assert data.images([video])[video.id].tobytes() == fixtures.Image.open(
        fixtures.io.BytesIO(fixtures.png(73))).convert("RGB").tobytes()


def test_limit_samples_whole_groups_in_file_order(data_dir):
    mme = load(data_dir, "mme")
    picked = mme.sample(3, seed=0)
    assert len(picked) == 4 and picked == sorted(picked, key=mme.examples.index)
    assert all(sum(p.meta["image"] == e.meta["image"] for p in picked) == 2 for e in picked)
    assert mme.sample(3, seed=0) == picked and mme.sample(None) == mme.examples
    pope = load(data_dir, "pope")
    assert len(pope.sample(2, seed=1)) == 2


def test_missing_and_unscorable_data_name_the_path(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match=r"pope: no Parquet files under .*/pope/ \(expected lmms-lab/POPE"):
        load(data_dir, "pope", root=str(tmp_path))
    fixtures.textvqa(tmp_path)
    (tmp_path / "textvqa/data/validation-00000-of-00001.parquet").unlink()
    with pytest.raises(ValueError, match="no scorable rows .* use validation"):
        load(data_dir, "textvqa", root=str(tmp_path))


@pytest.mark.s3
def test_reads_from_s3(data_dir):
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            fs = fsspec.filesystem("s3", skip_instance_cache=True)
            fs.mkdir("bench")
            fs.put(str(data_dir / "gqa") + "/", "bench/data/gqa/", recursive=True)
            data = load(data_dir, "gqa", root="s3://bench/data")
            assert [e.target for e in data.examples] == ["yes", "no", "left", "table"]
            assert len(data.images(data.examples)) == 4
    finally:
        server.stop()
