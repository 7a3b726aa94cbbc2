"""A job's inputs as a Ray Data datasource: folders, globs, single files and manifests, local or s3://.

The driver only plans (`plan_units`): it resolves the input into *units* —
one per manifest file, one per sub-folder of a folder (listed recursively by
its read task), one for a folder's own files, one per glob, one per explicit
file — and keeps nothing per input. Each unit becomes a read task of
`InputDatasource`, which lists or reads in the worker and yields Arrow blocks
of LISTING_SCHEMA rows `{id, uri, question}`:

- `id` is the manifest's id, else sha1(uri)[:16] (stable across runs and
  machines); with a questions file every input is fanned out once per
  question and the id gets a suffix from the question. Ids exist when the read
  task yields its rows, which is what Ray Data's checkpoint filter (applied
  right after the read) needs. Within a manifest, ids must be unique: the
  read task checks before it yields a row (`check_unique_ids`), since the
  checkpoint would drop a row whose id another row committed.
- A folder or glob keeps files by extension (`extensions(kind)`); the files
  skipped are counted per read task into `<stats_dir>/skipped-*.json`, which
  the summary adds up.
- A path that exists is literal even with `[`, `*` or `?` in its name
  ("Trip [2019]"); only a path that does not exist and has glob characters is
  a glob.

Whether a file really is an image or a video is found out when it is decoded
(`pipelines.batch.decode`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import uuid
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipelines.media.decode import SourceError
from pipelines.media.formats import VIDEO_EXTENSIONS, image_extensions, is_explicit_glob
from pipelines.media.storage import filesystem, full_uri, is_remote

logger = logging.getLogger(__name__)

def extensions(kind: str) -> tuple[str, ...]:
    """The one place that says which file names a folder or glob listing keeps."""
    return tuple(image_extensions()) if kind == "images" else tuple(VIDEO_EXTENSIONS)


MANIFEST_EXTENSIONS = (".parquet", ".jsonl")
LISTING_SCHEMA = pa.schema([("id", pa.string()), ("uri", pa.string()), ("question", pa.string())])
BLOCK_ROWS = 8192  # rows per block a read task yields (before the vqa fan-out)


def stable_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def question_id(row_id: str, question: str) -> str:
    return f"{row_id}-{stable_id(question)[:8]}"


@dataclass(frozen=True)
class Unit:
    """One read task's share of the input: `kind` is manifest | tree | flat | glob | file."""

    kind: str
    path: str


def plan_units(uri: str, endpoint_url: str | None = None, storage_options: dict[str, Any] | None = None) -> list[Unit]:
    """The read units of `uri`; raises FileNotFoundError naming `uri` when nothing is there.

    Memory: one entry per manifest file or sub-folder, never one per input
    file (a folder's own files are listed by their read task).
    """
    fs, path = filesystem(uri, endpoint_url, storage_options)
    fs.invalidate_cache()
    if is_explicit_glob(path, fs.exists):
        matches = sorted(fs.glob(path))
        if not matches:
            raise FileNotFoundError(f"input {uri} matches no files")
        if all(m.lower().endswith(MANIFEST_EXTENSIONS) for m in matches):
            return [Unit("manifest", m) for m in matches]
        return [Unit("glob", path)]
    if fs.isfile(path):
        return [Unit("manifest" if path.lower().endswith(MANIFEST_EXTENSIONS) else "file", path)]
    if not fs.isdir(path):
        raise FileNotFoundError(f"input {uri} does not exist")
    units = [Unit("flat", path)]
    if is_remote(uri):
        entries = fs.ls(path, detail=True)  # one level: sub-prefixes become their own read tasks
        subdirs = sorted(e["name"] for e in entries if e.get("type") == "directory")
    else:
        with os.scandir(path) as it:  # streams; only folder names are kept
            subdirs = sorted(e.path for e in it if e.is_dir(follow_symlinks=True))
    return units + [Unit("tree", d) for d in subdirs]


def has_any_input(units: list[Unit], job: Any) -> bool:
    """Whether the units hold at least one input (stops at the first one found)."""
    exts = extensions(job.kind)
    fs, _ = filesystem(job.input, job.endpoint_url, job.storage_options)
    for unit in units:
        if unit.kind in ("manifest", "file"):
            return True
        for f in _files_of(fs, unit):
            if f.lower().endswith(exts):
                return True
    return False


def _files_of(fs, unit: Unit) -> Iterator[str]:
    """File paths of a flat, tree or glob unit, in a stable order (sorted per folder)."""
    if unit.kind == "glob":
        yield from sorted(fs.glob(unit.path))
    elif unit.kind == "flat":
        for _root, _dirs, files in fs.walk(unit.path, maxdepth=1):
            yield from (posixpath.join(unit.path, f) for f in sorted(files))
    else:
        for root, dirs, files in fs.walk(unit.path):
            dirs.sort()
            yield from (posixpath.join(root, f) for f in sorted(files))


def make_datasource(units: list[Unit], job: Any, questions: list[str] | None, stats_dir: str | None):
    """A `ray.data.Datasource` with one read task per unit (see the module docstring)."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class _Inputs(Datasource):
        def get_name(self) -> str:
            return "ListInputs"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            return [ReadTask(_reader(u, job, questions, stats_dir), meta, schema=LISTING_SCHEMA) for u in units]

    return _Inputs()


def _reader(unit: Unit, job: Any, questions: list[str] | None, stats_dir: str | None) -> Callable[[], Iterator]:
    kind, endpoint, options, source = job.kind, job.endpoint_url, job.storage_options, job.input

    def read() -> Iterator[pa.Table]:
        fs, _ = filesystem(source, endpoint, options)  # units hold paths on the input's filesystem
        path = unit.path
        if unit.kind == "manifest":
            uri = full_uri(fs, path)
            check_unique_ids(fs, path, uri)
            records = (rec for _, rec in _manifest_records(fs, path, uri))
            for chunk in _chunks(records):
                yield _block(chunk, questions)
            return
        if unit.kind == "file":
            yield _block([{"id": None, "uri": full_uri(fs, path), "question": None}], questions)
            return
        exts, skipped, chunk = extensions(kind), 0, []
        for f in _files_of(fs, unit):
            if not f.lower().endswith(exts):
                skipped += 1
                continue
            chunk.append({"id": None, "uri": full_uri(fs, f), "question": None})
            if len(chunk) >= BLOCK_ROWS:
                yield _block(chunk, questions)
                chunk = []
        if chunk:
            yield _block(chunk, questions)
        if stats_dir and skipped:
            _write_skipped(stats_dir, unit, skipped, endpoint, options)

    return read


def _write_skipped(stats_dir: str, unit: Unit, n: int, endpoint: str | None, options: dict | None) -> None:
    """One small JSON file per read task run (a retried task writes its own; the summary takes the max per unit)."""
    fs, root = filesystem(stats_dir, endpoint, options)
    name = f"skipped-{stable_id(unit.kind + ':' + unit.path)}-{uuid.uuid4().hex[:8]}.json"
    try:
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(f"{root}/{name}", json.dumps({"unit": unit.path, "skipped": n}).encode())
    except Exception as err:  # a statistic must never fail the read
        logger.warning("could not record skipped files of %s: %s", unit.path, err)


def skipped_by_extension(stats_dir: str, endpoint: str | None = None, options: dict | None = None) -> int:
    """Files the listing skipped by extension in the run whose stats went to `stats_dir`."""
    fs, root = filesystem(stats_dir, endpoint, options)
    per_unit: dict[str, int] = {}
    try:
        names = fs.glob(f"{root}/skipped-*.json")
    except FileNotFoundError:
        return 0
    for name in names:
        rec = json.loads(fs.cat_file(name))
        per_unit[rec["unit"]] = max(per_unit.get(rec["unit"], 0), int(rec["skipped"]))
    return sum(per_unit.values())


def _chunks(records: Iterator[dict]) -> Iterator[list[dict]]:
    chunk = []
    for r in records:
        chunk.append(r)
        if len(chunk) >= BLOCK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _block(rows: list[dict], questions: list[str] | None) -> pa.Table:
    ids, uris, qs = [], [], []
    for r in rows:
        rid = _row_id(r)
        if questions:
            for q in questions:
                ids.append(question_id(rid, q))
                uris.append(r["uri"])
                qs.append(q)
        else:
            ids.append(rid)
            uris.append(r["uri"])
            qs.append(r["question"])
    return pa.table({"id": ids, "uri": uris, "question": qs}, schema=LISTING_SCHEMA)


def _manifest_records(fs, path: str, uri: str) -> Iterator[tuple[int, dict]]:
    """(row number, {id, uri, question}) of one manifest, streamed (Parquet by batches, JSONL by lines)."""
    base = full_uri(fs, posixpath.dirname(path))
    n = 0

    def row(rec: Any) -> dict:
        if not isinstance(rec, dict) or not rec.get("uri"):
            raise SourceError(f"manifest {uri} row {n} has no 'uri' field; each row needs uri (and optional id, question)")
        target = str(rec["uri"])
        # A relative uri is relative to the manifest, so a corpus can be moved with its manifest.
        if not is_remote(target) and not target.startswith("/"):
            target = f"{base}/{target}"
        question = rec.get("question")
        rid = rec.get("id")
        return {"id": str(rid) if rid is not None else None, "uri": target,
                "question": str(question) if question is not None else None}

    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            cols = [c for c in ("id", "uri", "question") if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=BLOCK_ROWS, columns=cols):
                for rec in batch.to_pylist():
                    n += 1
                    yield n, row(rec)
        return
    with fs.open(path, "rt") as fh:
        for line in fh:
            n += 1
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise SourceError(f"manifest {uri} line {n} is not JSON: {err}") from None
            yield n, row(rec)


def _row_id(rec: dict) -> str:
    return rec["id"] if rec["id"] is not None else stable_id(rec["uri"])


def check_unique_ids(fs, path: str, uri: str) -> None:
    """Raise SourceError naming two rows of the manifest that share an id (before any row is labeled).

    Ray Data's checkpoint drops every row whose id is committed, so a repeated
    id would silently lose a row on resume. A first pass keeps 8 bytes per row
    (the ids' hashes) in the read task, never on the driver; only when two
    hashes agree does a second pass look at the ids themselves.
    """
    import numpy as np

    hashes = array("q", (hash(_row_id(rec)) for _, rec in _manifest_records(fs, path, uri)))
    ordered = np.sort(np.frombuffer(hashes, dtype=np.int64))
    clashes = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not clashes:
        return
    first: dict[str, int] = {}
    for n, rec in _manifest_records(fs, path, uri):
        rid = _row_id(rec)
        if hash(rid) not in clashes:
            continue
        if rid in first:
            row = "line" if not path.lower().endswith(".parquet") else "row"
            raise SourceError(
                f"manifest {uri} {row}s {first[rid]} and {n} share the id {rid!r}; ids must be unique "
                "(a row without an 'id' takes sha1 of its uri: give rows that repeat a uri their own ids)")
        first[rid] = n


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


def read_unit(unit: Unit, job: Any, questions: list[str] | None = None, stats_dir: str | None = None) -> pa.Table:
    """All rows of one unit, read in this process (tests and small tools; the job reads in Ray tasks)."""
    blocks = list(_reader(unit, job, questions, stats_dir)())
    return pa.concat_tables(blocks) if blocks else LISTING_SCHEMA.empty_table()
