"""List a job's inputs: a folder, a glob, a single file or a manifest, local or s3://.

A listing row is `{id, uri, question}`: `id` is the manifest's id or
sha1(uri)[:16] (stable across runs and machines), `question` is None unless a
manifest row or a questions file gives one. Rows come sorted by uri. A folder
listing keeps files by extension; whether a file really is an image or a
video is found out when it is decoded (`pipelines.batch.decode`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

from pipelines.media.decode import SourceError
from pipelines.media.storage import filesystem, full_uri, is_remote

EXTENSIONS = {
    "images": (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"),
    "videos": (".mp4", ".webm", ".mkv", ".avi", ".mov"),
}
MANIFEST_EXTENSIONS = (".parquet", ".jsonl")
_GLOB_CHARS = set("*?[")


def stable_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def list_inputs(
    uri: str,
    kind: str,
    endpoint_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
    limit: int | None = None,
) -> list[dict]:
    """Rows {id, uri, question} for a folder, a glob, a single file or a manifest, sorted by uri.

    Raises FileNotFoundError naming `uri` when it does not exist; an existing
    location without matching files gives an empty list (the caller decides).
    """
    fs, path = filesystem(uri, endpoint_url, storage_options)
    fs.invalidate_cache()
    lowered = path.lower()
    if lowered.endswith(MANIFEST_EXTENSIONS) and not _GLOB_CHARS & set(path):
        rows = _read_manifest(fs, path, uri)
    else:
        if _GLOB_CHARS & set(path):
            files = [f for f in fs.glob(path) if f.lower().endswith(EXTENSIONS[kind])]
        elif fs.isfile(path):
            files = [path]  # one file given explicitly: keep it whatever its name
        elif fs.isdir(path):
            files = [f for f in fs.find(path) if f.lower().endswith(EXTENSIONS[kind])]
        else:
            raise FileNotFoundError(f"input {uri} does not exist")
        rows = [{"id": None, "uri": full_uri(fs, f), "question": None} for f in files]
    rows.sort(key=lambda r: r["uri"])
    if limit is not None:
        rows = rows[:limit]
    for r in rows:
        r["id"] = str(r["id"]) if r["id"] is not None else stable_id(r["uri"])
    _check_unique(rows, uri)
    return rows


def _read_manifest(fs, path: str, uri: str) -> list[dict]:
    if not fs.exists(path):
        raise FileNotFoundError(f"manifest {uri} does not exist")
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as fh:
            records = pq.read_table(fh).to_pylist()
    else:
        records = []
        with fs.open(path, "rt") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise SourceError(f"manifest {uri} line {n} is not JSON: {err}") from None
    base = full_uri(fs, posixpath.dirname(path))
    rows = []
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict) or not rec.get("uri"):
            raise SourceError(f"manifest {uri} row {n} has no 'uri' field; each row needs uri (and optional id, question)")
        target = str(rec["uri"])
        # A relative uri is relative to the manifest, so a corpus can be moved with its manifest.
        if not is_remote(target) and not target.startswith("/"):
            target = f"{base}/{target}"
        question = rec.get("question")
        rows.append({"id": rec.get("id"), "uri": target, "question": str(question) if question is not None else None})
    return rows


def _check_unique(rows: list[dict], uri: str) -> None:
    seen: dict[str, str] = {}
    for r in rows:
        if r["id"] in seen:
            raise SourceError(f"input {uri}: id {r['id']!r} is used by {seen[r['id']]} and {r['uri']}; ids must be unique")
        seen[r["id"]] = r["uri"]


def load_questions(uri: str, endpoint_url: str | None = None, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Questions from a JSONL file of `{"question": ...}` lines (local or s3://)."""
    fs, path = filesystem(uri, endpoint_url, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"questions file {uri} does not exist")
    questions = []
    with fs.open(path, "rt") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                q = json.loads(line)["question"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SourceError(f"questions file {uri} line {n}: expected a JSON object with a 'question' field") from None
            questions.append(str(q))
    if not questions:
        raise SourceError(f"questions file {uri} has no questions")
    return questions


def with_questions(rows: list[dict], questions: list[str]) -> list[dict]:
    """Every row once per question; ids get a suffix from the question so they stay stable and unique."""
    return [
        {"id": f"{r['id']}-{stable_id(q)[:8]}", "uri": r["uri"], "question": q} for r in rows for q in questions
    ]
