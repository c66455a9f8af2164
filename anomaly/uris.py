"""One place that turns a URI (local path, ``s3://``, any fsspec URI) into filesystems.

Why: pyarrow's own S3 filesystem ignores ``AWS_ENDPOINT_URL`` (MinIO, Ceph,
LocalStack, moto) while s3fs honours it, so every reader and writer, Ray Data's
included, gets an explicit fsspec-backed filesystem from here.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

import fsspec
import pyarrow.fs as pafs

from anomaly.errors import AnomalyError


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def is_local(uri: str) -> bool:
    return _protocol(uri) in ("file", "local")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem for ``uri`` and the path inside it (no scheme)."""
    protocol = _protocol(uri)
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        # Listings must see objects another process wrote a moment ago.
        options["use_listings_cache"] = False
        protocol = "s3"
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except (ImportError, ValueError) as exc:
        raise AnomalyError(uri, f"unsupported URI: {exc}") from exc
    if is_local(uri):
        path = os.path.abspath(path)
    return fs, path


def pyarrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem (wrapping fsspec) and the scheme-less path, for pyarrow and Ray."""
    fs, path = filesystem(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI without touching the scheme."""
    if is_local(uri):
        return os.path.join(uri, *parts)
    return posixpath.join(uri.rstrip("/"), *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write an object so readers see all of it or none of it.

    Local files go through a temporary name and ``os.replace``; an object store
    PUT is already atomic (a failed or killed upload leaves no object).
    """
    fs, path = filesystem(uri)
    if is_local(uri):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # A dot-prefixed temporary name: pyarrow and Ray readers skip it if a crash leaves it behind.
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise AnomalyError(uri, "no such file or object") from exc
    except PermissionError as exc:
        raise AnomalyError(uri, f"access denied: {exc}") from exc
