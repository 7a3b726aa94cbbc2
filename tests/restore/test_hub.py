"""Engine.from_pretrained from a local folder and from s3:// on a real S3 endpoint over HTTP."""

import os

import pytest

from restore import Engine, ReductionConfig, Request
from tests.helpers.images import make_image

PROMPT = "<image> what is in the image ?"


@pytest.fixture(scope="module")
def saved_model(llava, tmp_path_factory):
    model, processor = llava
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_local_folder_loads_and_matches(llava, saved_model):
    direct = Engine(*llava).generate([Request(PROMPT, [make_image(0)])], max_new_tokens=5)[0]
    loaded = Engine.from_pretrained(str(saved_model), reduction=ReductionConfig(method="divprune", budget=9))
    out = loaded.generate([Request(PROMPT, [make_image(0)], reduction=ReductionConfig())], max_new_tokens=5)[0]
    assert out.token_ids == direct.token_ids
    assert loaded.generate([Request(PROMPT, [make_image(0)])], max_new_tokens=2)[0].stats.kept_tokens == 9


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        Engine.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="unknown architecture"):
        Engine.from_pretrained("random:nope")


@pytest.fixture
def s3_server(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield f"http://{host}:{port}"
    server.stop()


@pytest.mark.s3
def test_s3_prefix_downloads_once_and_loads(s3_server, saved_model, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setenv("RESTORE_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("models")
    for name in os.listdir(saved_model):
        fs.put(str(saved_model / name), f"models/tiny-llava/{name}")
    engine = Engine.from_pretrained("s3://models/tiny-llava")
    assert engine.generate([Request(PROMPT, [make_image(1)])], max_new_tokens=3)[0].stats.visual_tokens == 36
    cached = list((tmp_path / "cache" / "s3").iterdir())
    assert len(cached) == 1 and (cached[0] / ".complete").exists()
    with pytest.raises(FileNotFoundError, match="no objects under s3://models/absent"):
        Engine.from_pretrained("s3://models/absent")


def test_hub_ids_resolve_from_the_local_cache_only(tmp_path, monkeypatch):
    from restore.hub import resolve_model_path

    cache = tmp_path / "hf"
    snapshot = cache / "models--someone--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    assert resolve_model_path("someone/tiny") == str(snapshot)
    with pytest.raises(FileNotFoundError, match="'someone/nomodel' is not a local directory, and not a hub model"):
        resolve_model_path("someone/nomodel")
