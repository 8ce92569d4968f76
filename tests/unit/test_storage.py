"""rtml.storage: the local folder store in tmp_path (put/get/exists/list/delete, overwrite, the root
created if absent, keys with odd characters, invalid keys refused naming them, no temp file left
behind), the S3 store against an in-memory fake client (prefix, missing keys, list), open_store's
URI dispatch and ensure_bucket creating a bucket only when it is absent."""

from __future__ import annotations

import pytest

from rtml import storage
from rtml.settings import Settings
from rtml.storage import LocalStore, S3Store, _clean, ensure_bucket, open_store

ODD_KEYS = [
    "ds/events/date=2026-01-01/batch=20260101T000000-0001/part-00000.parquet",
    "with space/and+plus%25/é ü 中文.json",
    "colon:semi;comma,quote'/x",
    "manual__2026-11-25T12:07:31.123456+00:00",
]


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


# --- the local folder store ---------------------------------------------------------------------------
def test_put_get_exists_delete(store):
    store.put("a/b.txt", b"one")
    assert store.get("a/b.txt") == b"one" and store.exists("a/b.txt")
    store.put("a/b.txt", b"two")  # a rewrite replaces the object
    assert store.get("a/b.txt") == b"two"
    store.delete("a/b.txt")
    assert not store.exists("a/b.txt")
    store.delete("a/b.txt")  # deleting what is gone is no error (a retried cleanup)
    assert not store.exists("a")  # a folder is not an object


def test_a_missing_key_is_a_key_error_naming_it(store):
    with pytest.raises(KeyError, match="no/such.json"):
        store.get("no/such.json")


def test_the_root_is_created_if_absent_and_file_uri_accepted(tmp_path):
    root = tmp_path / "deep" / "er" / "lake"
    s = LocalStore(f"file://{root}")
    assert root.is_dir() and s.uri == str(root.resolve())
    s.put("k", b"v")
    assert LocalStore(root).get("k") == b"v"  # a second store on the same folder sees it
    assert s.url("x/y") == str(root.resolve() / "x" / "y")


@pytest.mark.parametrize("key", ODD_KEYS)
def test_keys_with_odd_characters_round_trip(store, key):
    store.put(key, key.encode())
    assert store.get(key) == key.encode() and store.list() == [key]


def test_slashes_around_a_key_do_not_matter(store):
    store.put("/a/b/", b"x")
    assert store.get("a/b") == b"x" and store.list() == ["a/b"]


@pytest.mark.parametrize("key", ["", "/", "..", "a/../../etc/passwd", "../x", "a\x00b", "lone\ud800surrogate"])
def test_invalid_keys_are_refused_naming_them(store, key):
    with pytest.raises(ValueError, match="invalid object key"):
        store.put(key, b"x")
    with pytest.raises(ValueError, match="invalid object key"):
        store.get(key)
    assert store.list() == []


def test_clean_names_the_key_in_its_error():
    with pytest.raises(ValueError, match=r"'a/\.\./b'"):
        _clean("a/../b")
    assert _clean("a/..b/c..") == "a/..b/c.."  # dots inside a name are fine


def test_list_below_a_prefix_sorted_without_temp_files(store):
    for k in ("b/2", "b/1", "b/c/3", "bb/4", "a"):
        store.put(k, b"")
    (store.root / "b" / ".tmp-half-written").write_bytes(b"partial")  # a crashed put's temp file
    assert store.list("b") == ["b/1", "b/2", "b/c/3"]  # "bb/4" is not below the folder "b"
    assert store.list("/b/") == store.list("b")
    assert store.list() == ["a", "b/1", "b/2", "b/c/3", "bb/4"]
    assert store.list("b/1") == ["b/1"]  # a prefix naming an object lists it
    assert store.list("nothing/here") == []


def test_children_after_a_name_skip_the_names_before_it(store):
    for k in ("m/20260101-a.json", "m/20260102-b.json", "m/20260103-c.json", "m/sub/deeper.json"):
        store.put(k, b"{}")
    assert store.children("m") == ["20260101-a.json", "20260102-b.json", "20260103-c.json", "sub"]
    assert store.children("m", "20260102") == ["20260102-b.json", "20260103-c.json", "sub"]
    assert store.children("m", "20260102-b.json") == ["20260103-c.json", "sub"]  # after: exclusive


def test_put_leaves_no_temp_file_and_a_failed_put_keeps_the_old_object(store):
    store.put("k", b"old")
    with pytest.raises(TypeError):
        store.put("k", "not bytes")  # type: ignore[arg-type]
    assert store.get("k") == b"old"
    assert [p.name for p in store.root.iterdir()] == ["k"]


# --- the S3 store against an in-memory fake client ------------------------------------------------------
class _FakeS3:
    class exceptions:  # noqa: N801 - mirrors boto3's client.exceptions
        class NoSuchKey(Exception):
            pass

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.head_error: str | None = None
        self.buckets: list[str] = []

    def put_object(self, Bucket, Key, Body):  # noqa: N803 - boto3's argument names
        self.objects[(Bucket, Key)] = Body

    def get_object(self, Bucket, Key):  # noqa: N803
        if (Bucket, Key) not in self.objects:
            raise self.exceptions.NoSuchKey(Key)
        body = self.objects[(Bucket, Key)]
        return {"Body": type("B", (), {"read": lambda self: body})()}

    def head_object(self, Bucket, Key):  # noqa: N803
        from botocore.exceptions import ClientError

        if self.head_error:
            raise ClientError({"Error": {"Code": self.head_error}}, "HeadObject")
        if (Bucket, Key) not in self.objects:
            raise ClientError({"Error": {"Code": "404"}}, "HeadObject")

    def delete_object(self, Bucket, Key):  # noqa: N803
        self.objects.pop((Bucket, Key), None)

    def get_paginator(self, name):
        objects = self.objects

        class P:
            def paginate(self, Bucket, Prefix):  # noqa: N803
                keys = sorted(k for b, k in objects if b == Bucket and k.startswith(Prefix))
                for i in range(0, len(keys), 2):  # two per page: the store must read every page
                    yield {"Contents": [{"Key": k} for k in keys[i : i + 2]]}

        return P()

    def list_buckets(self):
        return {"Buckets": [{"Name": b} for b in self.buckets]}

    def create_bucket(self, Bucket):  # noqa: N803
        self.buckets.append(Bucket)


@pytest.fixture
def fake():
    return _FakeS3()


def test_s3_store_keeps_keys_under_its_prefix(fake):
    s = S3Store("bkt", "/lake/", client=fake)
    assert s.uri == "s3://bkt/lake" and s.url("a/b") == "s3://bkt/lake/a/b"
    for k in ("ds/x/1", "ds/x/2", "ds/x/3", "ds/xy/4", "other/5"):
        s.put(k, k.encode())
    assert ("bkt", "lake/ds/x/1") in fake.objects
    assert s.get("/ds/x/1") == b"ds/x/1"
    assert s.list("ds/x") == ["ds/x/1", "ds/x/2", "ds/x/3"]  # a folder, read over several pages
    assert len(s.list()) == 5
    s.delete("ds/x/1")
    assert not s.exists("ds/x/1") and s.exists("ds/x/2")
    with pytest.raises(KeyError, match="ds/x/1"):
        s.get("ds/x/1")
    with pytest.raises(ValueError, match="invalid object key"):
        s.put("../escape", b"")


def test_s3_store_without_a_prefix(fake):
    s = S3Store("bkt", client=fake)
    s.put("a/b", b"1")
    assert s.uri == "s3://bkt" and ("bkt", "a/b") in fake.objects and s.list() == ["a/b"]


def test_s3_exists_raises_anything_but_not_found(fake):
    from botocore.exceptions import ClientError

    s = S3Store("bkt", client=fake)
    fake.head_error = "NoSuchKey"
    assert s.exists("k") is False
    fake.head_error = "403"  # no permission is not "absent"
    with pytest.raises(ClientError):
        s.exists("k")


def test_ensure_bucket_creates_it_only_if_absent(fake, monkeypatch):
    used = []
    monkeypatch.setattr(storage, "s3_client", lambda settings=None, auth=None: used.append(auth) or fake)
    ensure_bucket("lake")
    ensure_bucket("lake", auth=("admin", "secret"))  # the stack's admin identity, not the environment's
    assert fake.buckets == ["lake"]
    assert used == [None, ("admin", "secret")]


def test_s3_client_takes_explicit_keys_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    s = Settings(home=tmp_path)
    creds = storage.s3_client(s)._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("env-key", "env-secret")
    creds = storage.s3_client(s, auth=("rtml-serve", "x"))._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("rtml-serve", "x")


def test_open_store_dispatches_on_the_uri(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(storage, "s3_client", lambda settings=None, auth=None: fake)
    s3 = open_store("s3://bucket/some/prefix")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    with pytest.raises(ValueError, match="invalid S3 URI 's3:///x': no bucket"):
        open_store("s3:///x")
    local = open_store(str(tmp_path / "l"))
    assert isinstance(local, LocalStore) and (tmp_path / "l").is_dir()
