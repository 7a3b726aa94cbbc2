"""`pipelines.batch.listing`: folders, globs, single files and manifests into sorted rows with stable ids."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batch.listing import list_inputs, load_questions, stable_id, with_questions
from pipelines.media.decode import SourceError


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for name in ("b.png", "A.JPG", "sub/c.webp", "notes.txt", "clip.mp4"):
        (root / name).write_bytes(b"x")
    return root


def test_folder_glob_and_single_file(folder):
    rows = list_inputs(str(folder), "images")
    assert [r["uri"] for r in rows] == [str(folder / n) for n in ("A.JPG", "b.png", "sub/c.webp")]  # sorted by uri
    assert all(r["id"] == stable_id(r["uri"]) and r["question"] is None for r in rows)
    assert list_inputs(str(folder), "images") == rows  # ids are stable across runs
    assert [r["uri"] for r in list_inputs(str(folder), "videos")] == [str(folder / "clip.mp4")]
    assert [r["uri"] for r in list_inputs(f"{folder}/*.png", "images")] == [str(folder / "b.png")]
    assert [r["uri"] for r in list_inputs(str(folder / "notes.txt"), "images")] == [str(folder / "notes.txt")]
    assert len(list_inputs(str(folder), "images", limit=2)) == 2
    with pytest.raises(FileNotFoundError, match=f"input {folder / 'absent'} does not exist"):
        list_inputs(str(folder / "absent"), "images")


def test_manifests_keep_ids_and_questions_and_resolve_relative_uris(folder):
    lines = [{"id": 7, "uri": "b.png", "question": "what ?"}, {"uri": "s3://bucket/x.png"}]
    (folder / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    rows = list_inputs(str(folder / "m.jsonl"), "images")
    assert rows == [  # sorted by uri
        {"id": "7", "uri": f"{folder}/b.png", "question": "what ?"},
        {"id": stable_id("s3://bucket/x.png"), "uri": "s3://bucket/x.png", "question": None},
    ]
    pq.write_table(pa.Table.from_pylist(lines), folder / "m.parquet")
    assert list_inputs(str(folder / "m.parquet"), "images") == rows
    (folder / "dup.jsonl").write_text('{"id": "a", "uri": "b.png"}\n{"id": "a", "uri": "c.png"}\n')
    with pytest.raises(SourceError, match="id 'a' is used by"):
        list_inputs(str(folder / "dup.jsonl"), "images")
    (folder / "nouri.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(SourceError, match="row 1 has no 'uri' field"):
        list_inputs(str(folder / "nouri.jsonl"), "images")


def test_questions_fan_out_with_stable_unique_ids(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"question": "what ?"}\n\n{"question": "where ?"}\n')
    questions = load_questions(str(q))
    assert questions == ["what ?", "where ?"]
    rows = with_questions([{"id": "x", "uri": "u", "question": None}], questions)
    assert [r["question"] for r in rows] == questions and len({r["id"] for r in rows}) == 2
    assert all(r["id"].startswith("x-") for r in rows)
    assert rows == with_questions([{"id": "x", "uri": "u", "question": None}], questions)
    q.write_text('{"q": 1}\n')
    with pytest.raises(SourceError, match="line 1: expected a JSON object with a 'question' field"):
        load_questions(str(q))
    with pytest.raises(FileNotFoundError, match="questions file"):
        load_questions(str(tmp_path / "none.jsonl"))
