"""One place that turns a URI (local path, ``s3://``, any fsspec URI) into filesystems.

- :func:`filesystem`: fsspec (s3fs for ``s3://``), for listings, small objects
  and atomic or conditional writes;
- :func:`pyarrow_filesystem`: pyarrow's native filesystem where it has one
  (local, ``s3://`` — ``pyarrow.fs.FileSystem.from_uri`` honours
  ``AWS_ENDPOINT_URL`` since pyarrow 15, checked against moto with pyarrow 26),
  so Parquet and checkpoint bytes do not go through a Python layer; any other
  scheme gets fsspec wrapped for pyarrow. Set ``ANOMALY_FSSPEC_PARQUET=1`` to
  route S3 through fsspec as before.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import re
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow.fs as pafs

from anomaly.errors import AnomalyError


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def is_local(uri: str) -> bool:
    return _protocol(uri) in ("file", "local")


def safe_file_name(name: str) -> str:
    """``name`` (a video id, which may hold ``/`` or spaces) as one safe file name of an output."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "video"


def in_scheme_of(uri: str, path: str) -> str:
    """A path an fsspec listing returned (no scheme) back as a URI of ``uri``'s scheme."""
    if is_local(uri) or "://" in path:
        return path
    return f"{_protocol(uri)}://{path}"


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
    """A pyarrow filesystem (native where pyarrow has one) and the scheme-less path, for pyarrow and Ray."""
    fs, path = filesystem(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), path
    if _protocol(uri) in ("s3", "s3a") and os.environ.get("ANOMALY_FSSPEC_PARQUET", "0") != "1":
        bucket = path.split("/", 1)[0]
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
        try:
            return _native_s3(bucket, endpoint), path
        except (OSError, ValueError):  # no region for the bucket, an odd endpoint: fsspec as before
            pass
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


@functools.lru_cache(maxsize=64)
def _native_s3(bucket: str, endpoint: str) -> pafs.FileSystem:
    """pyarrow's S3 filesystem for ``bucket`` (``endpoint``: the cache key; from_uri reads the env)."""
    native, _ = pafs.FileSystem.from_uri(f"s3://{bucket}")
    return native


def strip_scheme(path: str) -> str:
    """``s3://bucket/key`` -> ``bucket/key`` (what a pyarrow filesystem takes); other paths unchanged."""
    return path.split("://", 1)[1] if "://" in path else path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI without touching the scheme."""
    if is_local(uri):
        return os.path.join(uri, *parts)
    return posixpath.join(uri.rstrip("/"), *parts)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "strerror", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.exists(path)
    except PermissionError as exc:  # e.g. S3 answers 403 for a missing key without s3:ListBucket
        raise AnomalyError(uri, f"access denied: {_first_line(exc)}") from exc


@contextlib.contextmanager
def _write_errors(uri: str) -> Iterator[None]:
    """Storage that refuses a write (no such bucket, access denied, a file in the way) as an error naming ``uri``."""
    try:
        yield
    except PermissionError as exc:
        raise AnomalyError(uri, f"cannot write: access denied ({_first_line(exc)})") from exc
    except OSError as exc:  # no such bucket, a file where a folder should be, a full disk, ...
        raise AnomalyError(uri, f"cannot write: {type(exc).__name__}: {_first_line(exc)}") from exc


@contextlib.contextmanager
def _temporary_copy(path: str, data: bytes) -> Iterator[str]:
    """``data`` written and synced to a temporary name next to local ``path``, removed on leaving.

    The caller renames or links it into place; a dot-prefixed name (:data:`TEMP_FILE`) that
    pyarrow and Ray readers skip if a kill leaves it behind.
    """
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        yield tmp
    finally:
        with contextlib.suppress(OSError):  # gone already once renamed into place
            os.unlink(tmp)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write an object so readers see all of it or none of it.

    Local files go through a temporary name and ``os.replace``; an object store
    PUT is already atomic (a failed or killed upload leaves no object). A
    failed local write removes its temporary file; only a kill can leave one
    (:data:`TEMP_FILE`, cleaned up by the next run that owns the folder).
    Storage that refuses the write (no such bucket, access denied, a file in
    the way) is an :class:`AnomalyError` naming ``uri``.
    """
    fs, path = filesystem(uri)
    with _write_errors(uri):
        if is_local(uri):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with _temporary_copy(path, data) as tmp:
                os.replace(tmp, path)
        else:
            fs.pipe_file(path, data)


def create_bytes(uri: str, data: bytes) -> bool:
    """Create an object only if it does not exist yet; False when it already does (someone else won).

    Local files: the data goes to a temporary file that is hard-linked to the
    name (``link`` fails when the name exists, so a reader never sees a partial
    file). Object stores: a conditional PUT (``If-None-Match: *``, s3fs's
    ``mode="create"``).
    """
    fs, path = filesystem(uri)
    with _write_errors(uri):
        if is_local(uri):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            try:
                with _temporary_copy(path, data) as tmp:
                    os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            if "PreconditionFailed" in str(exc) or "412" in str(exc):
                return False
            raise
        return True


# The temporary name write_bytes_atomic gives a local file until its rename: ".NAME.tmp-HEX32".
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{32}$")


def remove_stale_temp_files(folder: str, *, older_than: float) -> list[str]:
    """Delete temporary files a killed writer left in a local ``folder`` (top level only).

    Only names of :data:`TEMP_FILE`'s form last modified before ``older_than``
    (a ``time.time()`` value, e.g. the start of the run that owns the folder)
    are removed, so a write in progress right now is never touched. Object
    stores never hold such files. Returns the removed paths.
    """
    if not is_local(folder):
        return []
    _, path = filesystem(folder)
    removed = []
    try:
        entries = list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if not TEMP_FILE.match(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < older_than:
                os.unlink(entry.path)
                removed.append(entry.path)
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
    return removed


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise AnomalyError(uri, "no such file or object") from exc
    except PermissionError as exc:
        raise AnomalyError(uri, f"access denied: {exc}") from exc


def ray_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for Ray Train's and Tune's ``RunConfig`` and for a
    ``Checkpoint``: a local path and None, or the scheme-less path and its pyarrow filesystem."""
    if is_local(uri):
        return filesystem(uri)[1], None
    filesystem_, path = pyarrow_filesystem(uri)
    return path, filesystem_
