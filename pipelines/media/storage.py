"""Where bytes live: one fsspec filesystem per URI (local path or s3://), and the output store.

The output store writes whole objects only: a local file is written under a
temporary name in the same directory and renamed with `os.replace` (atomic on
POSIX); an S3 object is written with one PUT of the whole body. Readers that
glob `part-*.parquet` therefore never see a partial file.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import fsspec

logger = logging.getLogger(__name__)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def filesystem(uri: str, endpoint_url: str | None = None, storage_options: dict[str, Any] | None = None):
    """(fs, path) for `uri`; s3:// gets `endpoint_url` and `storage_options`, local paths are made absolute."""
    if not is_remote(uri):
        path = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
        return fsspec.filesystem("file"), path
    options = dict(storage_options or {})
    if uri.startswith(("s3://", "s3a://")) and endpoint_url and "endpoint_url" not in options:
        options["endpoint_url"] = endpoint_url
    return fsspec.core.url_to_fs(uri, **options)


def full_uri(fs, path: str) -> str:
    """The URI a user would type for `path` on `fs` (listings drop the scheme)."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"


class OutputStore:
    """A directory (local or s3:// prefix) that receives whole files only."""

    def __init__(self, uri: str, endpoint_url: str | None = None, storage_options: dict[str, Any] | None = None):
        self.uri = uri.rstrip("/")
        self.fs, self.root = filesystem(self.uri, endpoint_url, storage_options)
        self.root = self.root.rstrip("/")
        self.local = not is_remote(self.uri)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def uri_of(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def names(self, pattern: str = "*") -> list[str]:
        """File names directly under the store matching `pattern`, sorted."""
        # s3fs caches listings per instance; another process (or a user) may have
        # deleted or added parts since, so always ask the store itself.
        self.fs.invalidate_cache(self.root)
        try:
            found = self.fs.glob(self.path(pattern))
        except FileNotFoundError:
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in found)

    def exists(self, name: str) -> bool:
        self.fs.invalidate_cache(self.path(name))
        return self.fs.exists(self.path(name))

    def read_bytes(self, name: str) -> bytes:
        return self.fs.cat_file(self.path(name))

    def write_atomic(self, name: str, data: bytes) -> None:
        """Publish `data` as `name` in one step: readers see the old state or the whole new file."""
        target = self.path(name)
        if self.local:
            folder, base = os.path.split(target)  # `name` may hold a sub-folder (e.g. _restore/job.json)
            os.makedirs(folder, exist_ok=True)
            # The temporary name starts with '.' so `part-*.parquet` globs never match it,
            # and it lives in the same directory so os.replace is a rename, not a copy.
            tmp = os.path.join(folder, f".{base}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            # One PUT of the whole body (s3fs uses put_object below 100 MiB; multipart above,
            # which S3 also publishes atomically on completion).
            self.fs.pipe_file(target, data)
        logger.debug("wrote %s (%d bytes)", self.uri_of(name), len(data))

    def remove(self, name: str) -> None:
        self.fs.rm_file(self.path(name))

    def check_writable(self) -> None:
        """Write and delete a probe object; raise PermissionError naming the URI if that fails."""
        name = f"_probe-{uuid.uuid4().hex[:12]}"
        try:
            if self.local:
                os.makedirs(self.root, exist_ok=True)
            self.write_atomic(name, b"")
            self.remove(name)
        except Exception as err:  # any backend error means "not writable"; the cause is kept
            raise PermissionError(
                f"output {self.uri} is not writable ({type(err).__name__}: {err}); "
                "check the path or bucket and the credentials"
            ) from err
