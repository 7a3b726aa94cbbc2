"""Benchmark Parquet under DIR/<task>/, on a local disk or under s3:// (fsspec; s3fs honours
AWS_ENDPOINT_URL): which files a task reads, its examples, and its images read back a chunk at a time.

Questions are read without their image column (cheap, even for VQAv2's 200k rows); images are read
per row group only for the chunk being answered, so memory holds one chunk's images, not a benchmark's.
"""

from __future__ import annotations

import bisect
import logging
import posixpath
import random
from collections.abc import Sequence
from typing import Any

from PIL import Image

from restore.bench.real.tasks import Example, TaskSpec
from restore.request import load_image

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "images", "img", "image_bytes")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow ships with the 'ray' extra
        raise ImportError("the real-benchmark suite reads Parquet with pyarrow: pip install pyarrow") from None
    return pa, pq


class Source:
    """The root given as --data: a local folder or an s3:// prefix."""

    def __init__(self, root: str) -> None:
        import fsspec

        self.root = root.rstrip("/")
        # A fresh filesystem: a cached one may hold an endpoint or credentials that changed since.
        self.fs, self.path = fsspec.core.url_to_fs(self.root, skip_instance_cache=True)

    def task_uri(self, task: str) -> str:
        return f"{self.root}/{task}/"

    def parquet_files(self, task: str) -> list[str]:
        """Every *.parquet under DIR/<task>/ (recursively), sorted; [] when the folder is missing."""
        base = posixpath.join(self.path, task)
        try:
            if not self.fs.isdir(base):
                return []
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        return sorted(f for f in found if f.endswith(".parquet"))

    def relative(self, task: str, path: str) -> str:
        return path[len(posixpath.join(self.path, task)) + 1 :]

    def open(self, path: str):
        return self.fs.open(path, "rb")


def _parts(rel: str) -> list[str]:
    return rel.split("/")


def select(files: Sequence[str], rels: Sequence[str], configs: Sequence[str], splits: Sequence[str]) -> list[str]:
    """The files of the preferred config and split, when the folder holds several (a whole hub repo);
    otherwise every file. A split matches a folder name or a file name 'split-*.parquet' / 'split.parquet'."""
    chosen = list(zip(files, rels, strict=True))
    for config in configs:
        hits = [(f, r) for f, r in chosen if config in _parts(r)[:-1]]
        if hits:
            chosen = hits
            break
    for split in splits:
        hits = [(f, r) for f, r in chosen
                if split in _parts(r)[:-1] or _parts(r)[-1].startswith((f"{split}-", f"{split}."))]
        if hits:
            chosen = hits
            break
    return [f for f, _ in chosen]


def _image_column(names: Sequence[str]) -> str | None:
    return next((c for c in IMAGE_COLUMNS if c in names), None)


class TaskData:
    """A task's examples and where each one's image is."""

    def __init__(self, spec: TaskSpec, source: Source) -> None:
        self.spec = spec
        self.source = source
        files = source.parquet_files(spec.name)
        if not files:
            raise FileNotFoundError(
                f"{spec.name}: no Parquet files under {source.task_uri(spec.name)} (expected {spec.hub}, "
                f"as DIR/{spec.name}/**/*.parquet)"
            )
        rels = [source.relative(spec.name, f) for f in files]
        self.files = select(files, rels, spec.configs, spec.splits)
        # An image table (GQA) is found by its config folder, or else by its schema among the files read.
        self.table_files = [f for f, r in zip(files, rels, strict=True)
                            if spec.image_table is not None and set(_parts(r)[:-1]) & set(spec.image_configs)
                            and f not in self.files]
        self._table: dict[str, Any] | None = None
        self._refs: dict[str, tuple[int, int]] = {}  # example id → (file index, row)
        self._columns: list[str | None] = []
        self.examples: list[Example] = self._read_examples()

    def _read_examples(self) -> list[Example]:
        _, pq = _pyarrow()
        spec, out = self.spec, []
        question_files = []
        for f in self.files:
            with self.source.open(f) as fh:
                pf = pq.ParquetFile(fh)
                names = pf.schema_arrow.names
                image_col = _image_column(names)
                if spec.image_table is not None and "question" not in names and image_col:
                    self.table_files.append(f)  # an image table found among the question files
                    continue
                question_files.append(f)
                self._columns.append(image_col)
                if image_col is None and spec.image_table is None:
                    raise ValueError(f"{spec.name}: {f} has no image column (one of {list(IMAGE_COLUMNS)}); "
                                     f"columns: {names}")
                rows = pf.read(columns=[n for n in names if n not in IMAGE_COLUMNS]).to_pylist()
                has_image = None
                if spec.drop_rows_without_image and image_col:
                    has_image = pf.read(columns=[image_col]).column(0).is_valid().to_pylist()
            rel = self.source.relative(spec.name, f)
            file_index = len(question_files) - 1
            for i, row in enumerate(rows):
                if has_image is not None and not has_image[i]:
                    continue
                try:
                    ex = spec.build(row, f"{rel}#{i}")
                except (KeyError, ValueError, TypeError) as err:
                    raise ValueError(f"{spec.name}: {f} row {i}: {err}") from None
                if ex is None:
                    continue
                self._refs[ex.id] = (file_index, i)
                out.append(ex)
        self.files = question_files
        if not out:
            hint = f"; {spec.note}" if spec.note else ""
            raise ValueError(f"{spec.name}: no scorable rows under {self.source.task_uri(spec.name)}{hint}")
        if spec.image_table is not None and not self.table_files:
            raise FileNotFoundError(
                f"{spec.name}: the questions name images by {spec.image_table[0]!r} but no image table "
                f"(Parquet with {spec.image_table[1]!r} and 'image' columns) is under "
                f"{self.source.task_uri(spec.name)}; expected {spec.hub}"
            )
        return out

    def sample(self, limit: int | None, seed: int = 0) -> list[Example]:
        """At most about `limit` examples, drawn at random (fixed seed) by whole groups (MME's image pairs,
        MMBench's circular copies), kept in file order; all of them without a limit."""
        if not limit or limit >= len(self.examples):
            return list(self.examples)
        key = self.spec.sample_group or (lambda e: e.id)
        groups: dict[Any, list[int]] = {}
        for i, e in enumerate(self.examples):
            groups.setdefault(key(e), []).append(i)
        order = list(groups)
        random.Random(f"{self.spec.name}:{seed}").shuffle(order)
        picked: list[int] = []
        for g in order:
            if len(picked) >= limit:
                break
            picked += groups[g]
        return [self.examples[i] for i in sorted(picked)]

    def images(self, examples: Sequence[Example]) -> dict[str, Image.Image]:
        """The decoded image of each example, by id: one read per row group the examples touch."""
        out: dict[str, Image.Image] = {}
        if self.spec.image_table is not None:
            table = self._image_table()
            for e in examples:
                ref = e.meta.get("image_ref")
                if ref not in table:
                    raise ValueError(f"{self.spec.name}: example {e.id} names image {ref!r}, which is not in "
                                     f"the image table ({len(table)} images)")
                out[e.id] = self._decode(table[ref], e.id, self.table_files[0])
            return out
        by_file: dict[int, list[tuple[int, Example]]] = {}
        for e in examples:
            fi, row = self._refs[e.id]
            by_file.setdefault(fi, []).append((row, e))
        _, pq = _pyarrow()
        for fi, items in sorted(by_file.items()):
            path, col = self.files[fi], self._columns[fi]
            with self.source.open(path) as fh:
                pf = pq.ParquetFile(fh)
                starts = [0]
                for g in range(pf.metadata.num_row_groups):
                    starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
                cached: dict[int, Any] = {}
                for row, e in sorted(items, key=lambda t: t[0]):
                    g = bisect.bisect_right(starts, row) - 1
                    if g not in cached:
                        cached = {g: pf.read_row_group(g, columns=[col]).column(0)}
                    value = cached[g][row - starts[g]].as_py()
                    out[e.id] = self._decode(value, e.id, path)
        return out

    def _image_table(self) -> dict[str, Any]:
        if self._table is None:
            _, pq = _pyarrow()
            key = self.spec.image_table[1]
            table: dict[str, Any] = {}
            for f in self.table_files:
                with self.source.open(f) as fh:
                    pf = pq.ParquetFile(fh)
                    col = _image_column(pf.schema_arrow.names)
                    if key not in pf.schema_arrow.names or col is None:
                        raise ValueError(f"{self.spec.name}: image table {f} needs columns {key!r} and 'image'; "
                                         f"it has {pf.schema_arrow.names}")
                    t = pf.read(columns=[key, col])
                    for k, v in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True):
                        table[str(k)] = v
            self._table = table
        return self._table

    def _decode(self, value: Any, what: str, parquet_path: str) -> Image.Image:
        """A Hugging Face Image cell ({'bytes', 'path'}), raw bytes, or a list of them (SEED-Bench: the
        middle one, as LLaVA-1.5 reads a clip's middle frame)."""
        where = f"{self.spec.name} example {what}"
        if isinstance(value, list):
            if not value:
                raise ValueError(f"{where}: the image list is empty")
            value = value[len(value) // 2]
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data:
                return load_image(data, where)
            if path:
                full = path if "://" in path or path.startswith("/") else posixpath.join(
                    posixpath.dirname(parquet_path), path)
                with self.source.open(full) as fh:
                    return load_image(fh.read(), where)
            raise ValueError(f"{where}: the image cell has neither bytes nor a path")
        if isinstance(value, bytes | bytearray):
            return load_image(bytes(value), where)
        raise ValueError(f"{where}: no image (got {type(value).__name__})")
