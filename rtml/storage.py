"""Object storage behind one small interface: an S3-compatible bucket or a plain local folder.

Keys are always '/'-separated relative paths. Writes are whole-object and atomic from a reader's
point of view (S3 PUT; write-to-temp-then-rename on a folder), which is what makes a retried batch
rewrite the same files instead of leaving half-written ones behind.
"""

from __future__ import annotations

import builtins
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from rtml.settings import Settings, get_settings


class ObjectStore(Protocol):
    uri: str

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def url(self, key: str) -> str: ...


def _clean(key: str) -> str:
    key = key.strip("/")
    if not key or ".." in key.split("/"):
        raise ValueError(f"invalid object key {key!r}")
    # A NUL or a lone surrogate cannot be a file name or an S3 key: without this check the OS or
    # the codec failed later ("embedded null byte", "surrogates not allowed") without naming the key.
    if "\x00" in key or any("\ud800" <= c <= "\udfff" for c in key):
        raise ValueError(f"invalid object key {key!r}: NUL or a lone surrogate")
    return key


class LocalStore:
    """A folder used as an object store."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(str(root).removeprefix("file://")).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _clean(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix.strip("/") if prefix.strip("/") else self.root
        if base.is_file():
            return [prefix.strip("/")]
        if not base.is_dir():
            return []
        out = []
        for p in base.rglob("*"):
            if p.is_file() and not p.name.startswith(".tmp-"):
                out.append(p.relative_to(self.root).as_posix())
        return sorted(out)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def children(self, prefix: str, after: str = "") -> builtins.list[str]:
        """The names directly below ``prefix`` (files and "folders"), without listing deeper; with
        ``after``, only the names that sort after it."""
        base = self.root / _clean(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if not p.name.startswith(".tmp-") and p.name > after)

    def url(self, key: str) -> str:
        return str(self._path(key))


class S3Store:
    """A bucket (and optional prefix) on an S3-compatible server."""

    def __init__(self, bucket: str, prefix: str = "", settings: Settings | None = None, client=None) -> None:
        self.settings = settings or get_settings()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or s3_client(self.settings)
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        key = _clean(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _iter(self, prefix: str) -> Iterator[str]:
        if prefix.strip("/"):
            full = self._key(prefix) + "/"
        else:
            full = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def list(self, prefix: str = "") -> list[str]:
        # A prefix names a "folder": list what is below it, like LocalStore does.
        return sorted(self._iter(prefix))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def children(self, prefix: str, after: str = "") -> builtins.list[str]:
        """The names directly below ``prefix``: one delimited listing, not every key below it; with
        ``after``, the listing starts after that name (the store skips the ones before: a listing of
        the recent names of a long history costs what they cost)."""
        full = self._key(prefix) + "/"
        out: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        extra = {"StartAfter": full + after} if after else {}
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/", **extra):
            out.update(p["Prefix"][len(full):].rstrip("/") for p in page.get("CommonPrefixes", []))
            out.update(obj["Key"][len(full):] for obj in page.get("Contents", []))
        return sorted(out)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def s3_client(settings: Settings | None = None, auth: tuple[str, str] | None = None):
    """A boto3 S3 client for the configured endpoint (path-style, as SeaweedFS and MinIO want);
    ``auth`` (access key, secret key) instead of the environment's credentials."""
    import boto3
    from botocore.config import Config

    s = settings or get_settings()
    key, secret = auth or (s.s3_access_key, s.s3_secret_key)
    return boto3.client(
        "s3",
        endpoint_url=s.s3_endpoint_url or None,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=s.s3_region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
    )


def ensure_bucket(bucket: str, settings: Settings | None = None, auth: tuple[str, str] | None = None) -> None:
    client = s3_client(settings, auth)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)


def store_uri(uri: str) -> str:
    """The ``uri`` of the store :func:`open_store` opens for ``uri`` (without opening it)."""
    if uri.startswith("s3://"):
        return uri.rstrip("/")
    return str(Path(uri.removeprefix("file://")).expanduser().resolve())


def open_store(uri: str | None = None, settings: Settings | None = None) -> ObjectStore:
    """The store behind a URI: ``s3://bucket/prefix`` or a folder path (``file://`` optional)."""
    s = settings or get_settings()
    uri = uri or s.lake_uri
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise ValueError(f"invalid S3 URI {uri!r}: no bucket")
        return S3Store(bucket, prefix, settings=s)
    return LocalStore(uri)
