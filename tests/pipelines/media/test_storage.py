"""`pipelines.media.storage`: URIs to filesystems, and the output store that publishes whole files only."""

from __future__ import annotations

import os

import pytest

from pipelines.media.storage import OutputStore, filesystem, full_uri, is_remote


def test_uris_map_to_filesystems_and_back(tmp_path, monkeypatch):
    assert is_remote("s3://bucket/key") and not is_remote("/data/x.png") and not is_remote("file:///data/x.png")
    monkeypatch.chdir(tmp_path)
    fs, path = filesystem("rel/x.png")
    assert path == str(tmp_path / "rel" / "x.png")  # local paths are made absolute
    assert filesystem("file:///data/x.png")[1] == "/data/x.png"
    assert full_uri(fs, path) == path
    s3, key = filesystem("s3://bucket/a/b.png", endpoint_url="http://127.0.0.1:1")
    assert key == "bucket/a/b.png" and full_uri(s3, key) == "s3://bucket/a/b.png"


def test_output_store_writes_whole_files_and_lists_them(tmp_path):
    store = OutputStore(str(tmp_path / "out") + "/")
    assert store.uri == str(tmp_path / "out") and store.names() == []  # absent: nothing, not an error
    store.write_atomic("part-00001.parquet", b"one")
    store.write_atomic("part-00000.parquet", b"zero")
    store.write_atomic("_SUMMARY.json", b"{}")
    store.write_atomic("part-00000.parquet", b"again")  # replaced in one step
    assert store.names("part-*.parquet") == ["part-00000.parquet", "part-00001.parquet"]
    assert store.read_bytes("part-00000.parquet") == b"again" and store.exists("_SUMMARY.json")
    assert store.uri_of("_SUMMARY.json") == f"{tmp_path / 'out'}/_SUMMARY.json"
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(".")]  # no temporary file left
    store.remove("_SUMMARY.json")
    assert not store.exists("_SUMMARY.json")
    store.check_writable()
    assert sorted(os.listdir(tmp_path / "out")) == ["part-00000.parquet", "part-00001.parquet"]  # probe removed


def test_unwritable_output_names_the_uri(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match=f"output {blocker / 'out'} is not writable"):
        OutputStore(str(blocker / "out")).check_writable()
