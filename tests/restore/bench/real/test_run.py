"""`restore bench accuracy --suite real` end to end on the fixture Parquet with a tiny random LLaVA (the
weights are noise: this tests the driver, not the model): the paper-shaped table, resumption, skipping."""

import json

import pytest

from jobs.cli import main as cli
from restore.bench.accuracy import main as accuracy_main
from restore.bench.real.run import main as real_main
from restore.bench.real.run import pad_square, table
from restore.engine import Engine
from tests.restore.bench.real import fixtures

TASKS = "pope,mme,gqa,textvqa,vqav2,sqa_img,mmbench,seed"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return fixtures.build(tmp_path_factory.mktemp("bench-data"))


@pytest.fixture
def calls(monkeypatch):
    """Counts Engine.generate calls and the requests they carry."""
    seen = {"calls": 0, "requests": 0}
    generate = Engine.generate

    def counting(self, requests, *args, **kwargs):
        seen["calls"] += 1
        seen["requests"] += len(requests)
        return generate(self, requests, *args, **kwargs)

    monkeypatch.setattr(Engine, "generate", counting)
    return seen


def argv(data_dir, out, *extra):
    return ["--model", "random:llava-tiny", "--data", str(data_dir), "--tasks", TASKS, "--methods", "divprune,fastv",
            "--budgets", "1/9", "--max-new-tokens", "2", "--batch-size", "8", "--out", str(out), "--quiet", *extra]


def test_whole_suite_runs_and_resumes(tmp_path, data_dir, calls, caplog):
    out = tmp_path / "run"
    assert cli(["bench", "accuracy", "--suite", "real", *argv(data_dir, out)]) == 0
    cells = 1 + 2 * 2  # full, then divprune and fastv at one budget, base and +RESTORE
    assert calls["requests"] == cells * sum(fixtures.QUESTIONS.values())
    report = json.loads((out / "accuracy.json").read_text())
    assert report["suite"] == "real" and report["tasks"] == TASKS.split(",") and report["skipped"] == {}
    assert report["tokens_per_image"] == 36 and report["questions"] == fixtures.QUESTIONS
    assert [(r["method"], r["budget"], r["restore"]) for r in report["results"]] == [
        ("divprune", 4, False), ("divprune", 4, True), ("fastv", 4, False), ("fastv", 4, True)]
    for r in report["results"]:
        assert set(r["scores"]) == set(fixtures.QUESTIONS) and r["kept_tokens"] == 4
        for t, rel in r["relative"].items():
            full = report["full"]["scores"][t]
            assert rel == (pytest.approx(r["scores"][t] / full) if full else None)
        defined = [v for v in r["relative"].values() if v is not None]
        assert r["average"] == (pytest.approx(sum(defined) / len(defined)) if defined else None)
    assert report["results"][2]["layer"] == 1  # FastV's K=2 of 32 at the same depth of 2 layers
    md = (out / "accuracy.md").read_text()
    assert md.strip() == table(report)
    assert "| method | 4/36 |" in md and "| divprune | " in md and " → " in md and "| full | 36 |" in md
    assert (out / "accuracy.png").stat().st_size > 1000
    answers = (out / "predictions" / "pope" / "fastv-4-restore-g0.5.jsonl").read_text().splitlines()
    assert len(answers) == fixtures.QUESTIONS["pope"]

    # A rerun answers nothing and gives the same report.
    calls.update(calls=0, requests=0)
    caplog.set_level("INFO", logger="restore.bench.real.run")
    again = accuracy_main(["--suite", "real", *argv(data_dir, out)])
    assert calls["calls"] == 0 and again == report
    assert "pope: full finished earlier (7 answers), skipping" in caplog.text

    # A cell cut short (a crash mid-write) answers only its missing questions.
    path = out / "predictions" / "mme" / "divprune-4-base.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:10])
    accuracy_main(["--suite", "real", *argv(data_dir, out)])
    assert calls["requests"] == 2
    assert json.loads((out / "accuracy.json").read_text()) == report


def test_oracle_answers_score_100_percent_of_full(tmp_path, data_dir):
    def perfect(examples, images, reduction):
        assert len(images) == len(examples)
        return [(fixtures.oracle(e), 1.0) for e in examples]

    report = real_main(argv(data_dir, tmp_path), answer=perfect)
    assert report["full"]["scores"] == {t: (600.0 if t == "mme" else pytest.approx(100.0)) for t in fixtures.QUESTIONS}
    assert all(r["average"] == pytest.approx(1.0) for r in report["results"])
    assert "| divprune | 100.0 → 100.0 |" in table(report)


def test_missing_tasks_are_skipped_naming_the_path(tmp_path, caplog):
    data = fixtures.build(tmp_path / "data", ["pope"])
    report = real_main(["--model", "random:llava-tiny", "--data", str(data), "--tasks", "pope,gqa", "--methods",
                        "divprune", "--budgets", "4", "--restore", "on", "--max-new-tokens", "1", "--limit", "3",
                        "--out", str(tmp_path / "out"), "--quiet"])
    assert report["tasks"] == ["pope"] and report["questions"] == {"pope": 3}
    assert f"no Parquet files under {data}/gqa/" in report["skipped"]["gqa"]
    assert "skipping gqa" in caplog.text
    assert "Skipped: gqa: no Parquet files" in table(report)


def test_a_different_run_in_the_same_folder_is_refused(tmp_path, data_dir):
    base = ["--model", "random:llava-tiny", "--data", str(data_dir), "--tasks", "pope", "--methods", "divprune",
            "--budgets", "4", "--restore", "off", "--out", str(tmp_path), "--quiet"]
    real_main([*base, "--max-new-tokens", "1"])
    with pytest.raises(ValueError, match="other settings .*max_new_tokens"):
        real_main([*base, "--max-new-tokens", "3"])
    nothing = ["--model", "random:llava-tiny", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]
    assert cli(["bench", "accuracy", "--suite", "real", *nothing]) == 2


def test_pad_square_centres_the_image_on_the_mean_colour():
    from PIL import Image

    im = Image.new("RGB", (4, 2), (255, 0, 0))
    out = pad_square(im, (128, 128, 128))
    assert out.size == (4, 4) and out.getpixel((0, 0)) == (128, 128, 128) and out.getpixel((0, 1)) == (255, 0, 0)
    assert out.getpixel((3, 2)) == (255, 0, 0) and out.getpixel((3, 3)) == (128, 128, 128)
    assert pad_square(out, (0, 0, 0)) is out
