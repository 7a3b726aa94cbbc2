"""`pipelines.batch.listing`: the driver plans read units (never the whole listing); read tasks give rows with ids."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batch.config import LabelJob
from pipelines.batch.listing import (
    Unit,
    extensions,
    has_any_input,
    load_questions,
    plan_units,
    question_id,
    read_unit,
    skipped_by_extension,
    stable_id,
)
from pipelines.media.decode import SourceError


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "Trip [2019]").mkdir()
    for name in ("b.png", "A.JPG", "sub/c.webp", "notes.txt", "clip.mp4", "Trip [2019]/d.tif"):
        (root / name).write_bytes(b"x")
    return root


def job(path, **kw) -> LabelJob:
    return LabelJob(**{"kind": "images", "input": str(path), "output": "/tmp/unused", **kw})


def rows(path, kind="images", questions=None, stats_dir=None) -> list[dict]:
    j = job(path, kind=kind)
    out = [r for u in plan_units(str(path)) for r in read_unit(u, j, questions, stats_dir).to_pylist()]
    return sorted(out, key=lambda r: r["uri"])


def test_folder_is_planned_by_subfolder_and_listed_in_the_read_tasks(folder, tmp_path):
    units = plan_units(str(folder))
    # One unit for the folder's own files, one per sub-folder: nothing per file on the driver.
    assert units == [Unit("flat", str(folder)), Unit("tree", str(folder / "Trip [2019]")), Unit("tree", str(folder / "sub"))]
    got = rows(folder, stats_dir=str(tmp_path / "stats"))
    assert [r["uri"] for r in got] == [str(folder / n) for n in ("A.JPG", "Trip [2019]/d.tif", "b.png", "sub/c.webp")]
    assert all(r["id"] == stable_id(r["uri"]) and r["question"] is None for r in got)
    assert rows(folder) == got  # ids are stable across runs
    assert skipped_by_extension(str(tmp_path / "stats")) == 2  # notes.txt and clip.mp4
    assert [r["uri"] for r in rows(folder, kind="videos")] == [str(folder / "clip.mp4")]
    assert has_any_input(units, job(folder))
    assert ".tif" in extensions("images") and ".png" in extensions("images")


def test_only_a_missing_path_with_glob_characters_is_a_glob(folder):
    # "Trip [2019]" exists: literal, not a character class matching "Trip 2".
    assert [r["uri"] for r in rows(folder / "Trip [2019]")] == [str(folder / "Trip [2019]" / "d.tif")]
    assert plan_units(f"{folder}/*.png") == [Unit("glob", f"{folder}/*.png")]
    assert [r["uri"] for r in rows(f"{folder}/*.png")] == [str(folder / "b.png")]
    assert [r["uri"] for r in rows(folder / "notes.txt")] == [str(folder / "notes.txt")]  # explicit: kept
    with pytest.raises(FileNotFoundError, match=f"input {folder / 'absent'} does not exist"):
        plan_units(str(folder / "absent"))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        plan_units(f"{folder}/*.gif")
    (folder / "empty").mkdir()
    assert not has_any_input(plan_units(str(folder / "empty")), job(folder / "empty"))


def test_manifests_keep_ids_and_questions_and_resolve_relative_uris(folder):
    lines = [{"id": 7, "uri": "b.png", "question": "what ?"}, {"uri": "s3://bucket/x.png"}]
    (folder / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    expected = [
        {"id": "7", "uri": f"{folder}/b.png", "question": "what ?"},
        {"id": stable_id("s3://bucket/x.png"), "uri": "s3://bucket/x.png", "question": None},
    ]
    assert rows(folder / "m.jsonl") == expected
    pq.write_table(pa.Table.from_pylist(lines), folder / "m.parquet")
    assert rows(folder / "m.parquet") == expected
    # A glob of manifests: one read unit per manifest file.
    assert plan_units(f"{folder}/m.*") == [Unit("manifest", str(folder / "m.jsonl")),
                                            Unit("manifest", str(folder / "m.parquet"))]
    (folder / "nouri.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(SourceError, match="row 1 has no 'uri' field"):
        rows(folder / "nouri.jsonl")


def test_a_manifest_with_a_repeated_id_fails_before_any_row(folder):
    # Two questions about one picture and no ids: both rows would get sha1(uri), and a resume would drop one.
    lines = [{"uri": "b.png", "question": "what ?"}, {"id": "x", "uri": "c.png"}, {"uri": "b.png", "question": "where ?"}]
    (folder / "dup.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(SourceError, match=f"lines 1 and 3 share the id '{stable_id(str(folder / 'b.png'))}'"):
        rows(folder / "dup.jsonl")
    pq.write_table(pa.Table.from_pylist([{"id": "a", "uri": "b.png"}, {"id": "b", "uri": "b.png"},
                                         {"id": "a", "uri": "c.png"}]), folder / "dup.parquet")
    with pytest.raises(SourceError, match="rows 1 and 3 share the id 'a'"):
        rows(folder / "dup.parquet")
    lines[2]["id"] = "y"  # the same picture twice, told apart by their ids: fine
    (folder / "dup.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert [r["id"] for r in rows(folder / "dup.jsonl")] == [stable_id(str(folder / "b.png")), "y", "x"]


def test_questions_fan_out_in_the_read_with_stable_unique_ids(tmp_path, folder):
    q = tmp_path / "q.jsonl"
    q.write_text('{"question": "what ?"}\n\n{"question": "where ?"}\n')
    questions = load_questions(str(q))
    assert questions == ["what ?", "where ?"]
    got = rows(folder / "b.png", questions=questions)
    base = stable_id(str(folder / "b.png"))
    assert [r["id"] for r in got] == [question_id(base, "what ?"), question_id(base, "where ?")]
    assert [r["question"] for r in got] == questions and all(r["id"].startswith(base + "-") for r in got)
    q.write_text('{"q": 1}\n')
    with pytest.raises(SourceError, match="line 1: expected a JSON object with a 'question' field"):
        load_questions(str(q))
    with pytest.raises(FileNotFoundError, match="questions file"):
        load_questions(str(tmp_path / "none.jsonl"))
