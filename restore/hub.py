"""Resolve a model reference to a local directory: 'default', a folder, a hub id already in the local
Hugging Face cache, or s3:// (copied once into the restore cache)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).parent / "zoo" / "model"


def cache_root() -> Path:
    return Path(os.environ.get("RESTORE_CACHE", Path.home() / ".cache" / "restore"))


def download_s3_prefix(uri: str, dest: Path) -> Path:
    """Copy every object under an s3:// prefix into `dest` once (a marker file makes it idempotent)."""
    import fsspec

    marker = dest / ".complete"
    if marker.exists():
        return dest
    # A fresh filesystem: a cached one may hold credentials or an endpoint that changed since.
    fs, root = fsspec.core.url_to_fs(uri, skip_instance_cache=True)
    files = [f for f in fs.find(root) if not f.endswith("/")]
    if not files:
        raise FileNotFoundError(f"no objects under {uri}")
    tmp = dest.with_name(dest.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in files:
        rel = f[len(root.rstrip("/")) + 1 :] if f != root else Path(f).name
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get(f, str(target))
    (tmp / ".complete").write_text(uri)
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    tmp.rename(dest)
    logger.info("downloaded %d files from %s to %s", len(files), uri, dest)
    return dest


def resolve_model_path(ref: str) -> str:
    if ref == "default":
        if not (DEFAULT_MODEL_DIR / "config.json").exists():
            raise FileNotFoundError(
                f"the embedded default model is not present at {DEFAULT_MODEL_DIR}; "
                "train it with `python -m restore.zoo.train` or pass --model PATH"
            )
        return str(DEFAULT_MODEL_DIR)
    if ref.startswith("s3://"):
        digest = hashlib.sha256(ref.encode()).hexdigest()[:16]
        return str(download_s3_prefix(ref, cache_root() / "s3" / digest))
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model directory {path} has no config.json")
        return str(path.resolve())
    return cached_hub_model(ref)


def cached_hub_model(ref: str) -> str:
    """The local snapshot of hub id `ref` (owner/name) in the Hugging Face cache. Models are never fetched at
    run time: every worker of a job would fetch its own copy, and an unknown id would be retried for minutes."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(ref, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, ValueError):
        raise FileNotFoundError(
            f"model {ref!r} is not a local directory, and not a hub model in the local Hugging Face cache; "
            f"pass a model directory, s3://prefix, 'default' or random:ARCH, or download it first "
            f"(`hf download {ref}`)"
        ) from None
