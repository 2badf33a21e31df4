"""The storage layer against a local folder and a real S3-compatible server (moto, on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from s3_servers import free_port as _free_port
from s3_servers import moto_http

from components.common import storage
from components.common.faults import InfrastructureError, RetryPolicy
from components.common.storage import (
    InvalidKeyError,
    LocalStore,
    ObjectNotFoundError,
    OutsideStoreError,
    S3Store,
    StorageAccessError,
    StorageError,
    StorageUnavailableError,
    fetch_to_local,
    open_store,
    validate_key,
)

SECRET = "s3cr3t-Do-Not-Leak-7f3a9"
ACCESS = "clipsync-test-access"
BAD_KEYS = ["", "../x", "/abs", "a/../../b", "a\\b", "a\x00b", "a//b", "./a", "a/", "a/./b", "s3://b/k", "x\ny"]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API (moto's threaded server) on a free loopback port for the whole session."""
    with moto_http() as endpoint:
        yield endpoint


@pytest.fixture()
def s3_env(moto_endpoint: str, monkeypatch) -> str:
    """MINIO_* variables pointing at the moto server."""
    monkeypatch.setenv("MINIO_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    monkeypatch.delenv("MINIO_SECURE", raising=False)
    monkeypatch.delenv("MINIO_REGION", raising=False)
    return moto_endpoint


def make_bucket(endpoint: str) -> str:
    """Create a fresh bucket with the minio client; returns its name."""
    from minio import Minio

    name = f"clipsync-{uuid.uuid4().hex[:12]}"
    client = Minio(endpoint.split("://", 1)[1], access_key=ACCESS, secret_key=SECRET, secure=False)
    client.make_bucket(name)
    return name


@pytest.fixture()
def s3_bucket(s3_env: str) -> str:
    return make_bucket(s3_env)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> storage.ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "bucket")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}")


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("key", ["a", "videos/clip_001.mp4", "a/b/c.d", "ünïcode/файл.mp4", "a..b/c"])
def test_validate_key_accepts_safe_keys_unchanged(key):
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("", "empty"),
        ("../x", "'..'"),
        ("a/../../b", "'..'"),
        ("/abs", "absolute"),
        ("a\\b", "backslash"),
        ("a\x00b", "NUL"),
        ("x\ny", "control"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("./a", "'.'"),
        ("s3://b/k", "URI"),
        ("k" * 1100, "longer than 1024"),
    ],
)
def test_validate_key_refuses_with_clear_message(key, words):
    with pytest.raises(InvalidKeyError, match=None) as info:
        validate_key(key)
    assert words in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, StorageError)


def test_validate_key_refuses_non_string():
    with pytest.raises(InvalidKeyError, match="must be a string"):
        validate_key(Path("a"))  # type: ignore[arg-type]


# ---------------------------------------------------------------- behaviour on both stores


def test_put_get_stat_exists_list(store, tmp_path):
    before = datetime.now(UTC) - timedelta(seconds=5)
    info = store.put_bytes("videos/b.mp4", b"bbbb")
    assert (info.key, info.size) == ("videos/b.mp4", 4)
    store.put_bytes("videos/a.mp4", b"a" * 10)
    store.put_bytes("videos/sub/c.mp4", b"c")
    store.put_bytes("labels/l.jsonl", b"{}\n", content_type="application/x-ndjson")

    assert store.get_bytes("videos/b.mp4") == b"bbbb"
    st = store.stat("videos/a.mp4")
    assert st.size == 10
    assert st.last_modified.tzinfo is not None and st.last_modified.utcoffset() == timedelta(0)
    assert before <= st.last_modified <= datetime.now(UTC) + timedelta(seconds=5)
    assert store.exists("videos/sub/c.mp4")
    assert not store.exists("videos/missing.mp4")

    assert [i.key for i in store.list("videos/")] == ["videos/a.mp4", "videos/b.mp4", "videos/sub/c.mp4"]
    assert [i.key for i in store.list()] == [
        "labels/l.jsonl",
        "videos/a.mp4",
        "videos/b.mp4",
        "videos/sub/c.mp4",
    ]
    assert [i.size for i in store.list("videos/")] == [10, 4, 1]
    # A prefix is matched as a string, as on S3.
    assert list(store.list_keys("videos/s")) == ["videos/sub/c.mp4"]
    assert list(store.list("nothing/")) == []

    dest = store.get_file("videos/a.mp4", tmp_path / "out" / "a.mp4")
    assert dest.read_bytes() == b"a" * 10
    # Overwrite replaces.
    store.put_bytes("videos/b.mp4", b"new")
    assert store.get_bytes("videos/b.mp4") == b"new"


def test_uri_for_and_local_path(store):
    store.put_bytes("x/y.bin", b"1")
    if isinstance(store, LocalStore):
        assert store.uri_for("x/y.bin") == str(store.root / "x" / "y.bin")
        assert store.local_path("x/y.bin") == store.root / "x" / "y.bin"
    else:
        assert store.uri_for("x/y.bin") == f"{store.uri}/x/y.bin"
        assert store.uri_for("x/y.bin").startswith("s3://clipsync-")
        assert store.local_path("x/y.bin") is None


def test_missing_key_errors(store, tmp_path):
    for call in (
        lambda: store.stat("no/such.mp4"),
        lambda: store.get_bytes("no/such.mp4"),
        lambda: store.get_file("no/such.mp4", tmp_path / "d"),
        lambda: fetch_to_local(store, "no/such.mp4", tmp_path / "cache"),
    ):
        with pytest.raises(ObjectNotFoundError) as info:
            call()
        assert isinstance(info.value, KeyError)
        assert "'no/such.mp4'" in str(info.value) and store.uri in str(info.value)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("key", BAD_KEYS)
def test_refused_keys_on_every_method(store, key, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    calls = {
        "put_bytes": lambda: store.put_bytes(key, b"x"),
        "put_file": lambda: store.put_file(key, src),
        "get_bytes": lambda: store.get_bytes(key),
        "get_file": lambda: store.get_file(key, tmp_path / "dest"),
        "stat": lambda: store.stat(key),
        "exists": lambda: store.exists(key),
        "uri_for": lambda: store.uri_for(key),
        "local_path": lambda: store.local_path(key),
        "fetch_to_local": lambda: fetch_to_local(store, key, tmp_path / "cache"),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidKeyError, match="object key") as info:
            call()
        assert "key" in str(info.value), name
    # Nothing was written anywhere.
    assert list(store.list()) == []
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()  # '../x' did not escape the root


@pytest.mark.parametrize("prefix", ["../", "/abs/", "a/../../", "a//", "a\\b/"])
def test_refused_prefixes(store, prefix):
    with pytest.raises(InvalidKeyError, match="invalid prefix"):
        list(store.list(prefix))


def test_put_file_roundtrip_and_fetch_to_local(store, tmp_path):
    src = tmp_path / "clip.mp4"
    src.write_bytes(os.urandom(300_000))
    info = store.put_file("videos/clip.mp4", src, content_type="video/mp4")
    assert info.size == 300_000
    cache = tmp_path / "cache"
    local = fetch_to_local(store, "videos/clip.mp4", cache)
    assert local.read_bytes() == src.read_bytes()
    if isinstance(store, LocalStore):
        assert local == store.root / "videos" / "clip.mp4"  # the object itself, no copy
        assert not cache.exists()
    else:
        assert local == cache / "videos" / "clip.mp4"
        inode = local.stat().st_ino
        again = fetch_to_local(store, "videos/clip.mp4", cache)
        assert again == local and again.stat().st_ino == inode  # not downloaded a second time
        store.put_bytes("videos/clip.mp4", b"changed")
        assert fetch_to_local(store, "videos/clip.mp4", cache).read_bytes() == b"changed"


def test_put_file_refuses_missing_source(store, tmp_path):
    with pytest.raises(StorageError, match="not a file"):
        store.put_file("a.bin", tmp_path / "absent.bin")


# ---------------------------------------------------------------- local specifics


def test_local_put_is_atomic_and_listing_skips_temporaries(tmp_path):
    st = LocalStore(tmp_path / "root")
    st.put_bytes("a/b.bin", b"x" * 100)
    assert [p.name for p in (st.root / "a").iterdir()] == ["b.bin"]  # no temporary left behind
    (st.root / "a" / ".clipsync-tmp-abc").write_bytes(b"partial")
    assert list(st.list_keys()) == ["a/b.bin"]


def test_local_store_refuses_symlinks_that_leave_its_root(tmp_path):
    other = tmp_path / "other-client"  # another client's folder beside this one
    (other / "videos").mkdir(parents=True)
    (other / "videos" / "theirs.mp4").write_bytes(b"their video")
    st = LocalStore(tmp_path / "mine")
    st.put_bytes("videos/own.mp4", b"own")
    st.put_bytes("videos/real/inside.mp4", b"inside")
    (st.root / "videos" / "stolen.mp4").symlink_to(other / "videos" / "theirs.mp4")
    (st.root / "videos" / "alias.mp4").symlink_to(st.root / "videos" / "own.mp4")  # stays inside: allowed
    (st.root / "videos" / "dangling.mp4").symlink_to(st.root / "videos" / "gone.mp4")
    (st.root / "linked").symlink_to(other / "videos", target_is_directory=True)
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}

    # Reading: every way in refuses the link out of the root, and through a linked folder.
    calls = (
        st.stat,
        st.get_bytes,
        st.local_path,
        st.uri_for,
        lambda key: st.get_file(key, tmp_path / "dest"),
        lambda key: fetch_to_local(st, key, tmp_path / "cache"),
    )
    for key in ("videos/stolen.mp4", "linked/theirs.mp4"):
        for call in calls:
            with pytest.raises(OutsideStoreError, match="leads outside the store"):
                call(key)
    # Writing: neither through the linked folder nor over the link.
    with pytest.raises(OutsideStoreError):
        st.put_bytes("linked/planted.mp4", b"x")
    with pytest.raises(OutsideStoreError):
        st.put_file("videos/stolen.mp4", st.root / "videos" / "own.mp4")
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "dest").exists()

    assert st.get_bytes("videos/alias.mp4") == b"own"
    assert list(st.list_keys("videos/")) == ["videos/alias.mp4", "videos/own.mp4", "videos/real/inside.mp4"]
    listed = {i.key: i.refused for i in st.list(include_refused=True)}
    assert listed["videos/stolen.mp4"] == "bad_link: a symbolic link that leads outside the store"
    assert listed["videos/dangling.mp4"] == "bad_link: a symbolic link to nothing"
    assert listed["videos/own.mp4"] == listed["videos/alias.mp4"] == ""
    assert not any(k.startswith("linked/") for k in listed)  # a linked folder is not followed
    # A store whose prefix folder itself leads outside lists nothing.
    (st.root / "up").symlink_to(other, target_is_directory=True)
    assert list(st.list("up/videos/", include_refused=True)) == []


BAD_NAMES = ["videos/back\\slash.mp4", "videos/ctl\x01.mp4", "videos/tab\there.mp4", "videos/a//b.mp4"]


def test_names_that_are_not_keys_are_listed_only_on_request(store, tmp_path):
    store.put_bytes("videos/ok.mp4", b"ok")
    local = isinstance(store, LocalStore)
    # On disk 'a//b' would be the folder a and the file b (a valid key): only S3 keeps the empty segment.
    for name in BAD_NAMES[:3] if local else BAD_NAMES:
        if local:
            path = store.root.joinpath(*name.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        else:  # the raw client: clipsync itself never writes such a name
            import io

            store._client.put_object(store.bucket, store._prefix + name, io.BytesIO(b"x"), 1)
    if local:  # a file name that is not UTF-8 on disk
        (store.root / "videos").joinpath(os.fsdecode(b"latin1-\xe9.mp4")).write_bytes(b"x")

    assert list(store.list_keys("videos/")) == ["videos/ok.mp4"]
    listed = {i.key: i.refused for i in store.list("videos/", include_refused=True)}
    assert listed.pop("videos/ok.mp4") == ""
    assert all(reason.startswith("bad_name: object key") for reason in listed.values()), listed
    if local:
        assert set(listed) == {*BAD_NAMES[:3], os.fsdecode(b"videos/latin1-\xe9.mp4")}
        assert "not valid UTF-8" in listed[os.fsdecode(b"videos/latin1-\xe9.mp4")]
    else:
        assert set(listed) == set(BAD_NAMES)
    assert "backslash" in listed["videos/back\\slash.mp4"] and "control character" in listed["videos/ctl\x01.mp4"]


class _Answering(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status the server was given (an S3 server failing, or refusing)."""

    def _answer(self) -> None:
        self.server.requests += 1
        status, code = self.server.reply
        body = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "code", "error", "attempts"),
    [
        (503, "SlowDown", StorageUnavailableError, 3),
        (500, "InternalError", StorageUnavailableError, 3),
        (403, "InvalidAccessKeyId", StorageAccessError, 1),
        (403, "SignatureDoesNotMatch", StorageAccessError, 1),
    ],
)
def test_s3_server_errors_are_classified_and_only_transient_ones_retried(
    s3_env, monkeypatch, status, code, error, attempts
):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    server.reply, server.requests = (status, code), 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("MINIO_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        st = S3Store("s3://bucket-c", check_bucket=False, retry=RetryPolicy(attempts=3, first_wait_s=0.01))
        with pytest.raises(error, match=code) as info:
            st.get_bytes("videos/a.mp4")
        assert isinstance(info.value, InfrastructureError) and not isinstance(info.value, ObjectNotFoundError)
        assert server.requests == attempts
    finally:
        server.shutdown()
        server.server_close()


def test_s3_call_rides_out_a_short_outage(s3_env, monkeypatch):
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    restarted = []
    try:
        monkeypatch.setenv("MINIO_ENDPOINT", f"http://127.0.0.1:{port}")
        bucket = make_bucket(f"http://127.0.0.1:{port}")
        st = S3Store(f"s3://{bucket}", retry=RetryPolicy(attempts=8, first_wait_s=0.2, max_wait_s=1.0))
        st.put_bytes("a.bin", b"payload")
        server.stop()

        def restart() -> None:
            again = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            again.start()
            restarted.append(again)

        timer = threading.Timer(1.0, restart)
        timer.start()
        assert st.get_bytes("a.bin") == b"payload"  # failed while the server was down, then succeeded
        timer.join()
        assert restarted
    finally:
        for srv in restarted:
            srv.stop()


def test_open_store_dispatch(tmp_path, s3_bucket):
    assert isinstance(open_store(str(tmp_path / "p")), LocalStore)
    by_uri = open_store(f"file://{tmp_path / 'q'}")
    assert isinstance(by_uri, LocalStore) and by_uri.root == (tmp_path / "q").resolve()
    s3 = open_store(f"s3://{s3_bucket}/some/prefix/")
    assert isinstance(s3, S3Store) and s3.uri == f"s3://{s3_bucket}/some/prefix"
    for bad in ("http://x/y", "gs://b", "", "s3://", "s3://Bad_Bucket"):
        with pytest.raises(StorageError):
            open_store(bad)
    with pytest.raises(InvalidKeyError, match="invalid prefix"):
        open_store(f"s3://{s3_bucket}/a/../b")


# ---------------------------------------------------------------- S3 specifics


def test_s3_multipart_upload(s3_env, s3_bucket, tmp_path):
    st = S3Store(f"s3://{s3_bucket}", part_size=5 * 1024 * 1024)
    src = tmp_path / "big.bin"
    data = os.urandom(12 * 1024 * 1024)
    src.write_bytes(data)
    info = st.put_file("videos/big.bin", src)
    assert info.size == len(data)
    # An S3 multipart etag is md5(concatenated part md5s) + "-<parts>": 12 MiB in 5 MiB parts -> 3.
    parts = [data[i : i + 5 * 1024 * 1024] for i in range(0, len(data), 5 * 1024 * 1024)]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    assert info.etag == expected
    assert hashlib.sha256(st.get_file("videos/big.bin", tmp_path / "back.bin").read_bytes()).digest() == (
        hashlib.sha256(data).digest()
    )
    small = st.put_bytes("small.bin", b"abc")
    assert small.etag == hashlib.md5(b"abc").hexdigest()
    with pytest.raises(StorageError, match="at least 5 MiB"):
        S3Store(f"s3://{s3_bucket}", part_size=1024)


def test_s3_prefix_root(s3_env, s3_bucket):
    inner = open_store(f"s3://{s3_bucket}/tenant/acme")
    info = inner.put_bytes("videos/v.mp4", b"v")
    assert info.key == "videos/v.mp4"
    assert inner.uri_for("videos/v.mp4") == f"s3://{s3_bucket}/tenant/acme/videos/v.mp4"
    outer = open_store(f"s3://{s3_bucket}")
    outer.put_bytes("tenant/other.bin", b"o")
    outer.put_bytes("tenant/acmex/leak.bin", b"o")
    assert list(outer.list_keys()) == ["tenant/acme/videos/v.mp4", "tenant/acmex/leak.bin", "tenant/other.bin"]
    # The inner store sees only its own folder (not the sibling "acmex" that shares the string prefix).
    assert list(inner.list_keys()) == ["videos/v.mp4"]
    assert inner.get_bytes("videos/v.mp4") == b"v"
    assert not inner.exists("other.bin")


def test_s3_missing_bucket(s3_env):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        open_store("s3://no-such-bucket-here")
    lazy = S3Store("s3://no-such-bucket-here", check_bucket=False)
    with pytest.raises(StorageError, match="does not exist") as info:
        lazy.get_bytes("a")
    assert not isinstance(info.value, ObjectNotFoundError)


@pytest.mark.parametrize("missing", ["MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"])
def test_s3_missing_setting_is_named(s3_env, monkeypatch, missing):
    monkeypatch.delenv(missing)
    with pytest.raises(StorageError, match=f"environment variable {missing} is not set"):
        open_store("s3://whatever")


def test_s3_settings_parsing(monkeypatch):
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    monkeypatch.delenv("MINIO_SECURE", raising=False)
    monkeypatch.setenv("MINIO_ENDPOINT", "minio.example:9000")
    assert storage.s3_settings_from_env()["secure"] is True
    monkeypatch.setenv("MINIO_SECURE", "false")
    got = storage.s3_settings_from_env()
    assert (got["endpoint"], got["secure"], got["region"]) == ("minio.example:9000", False, None)
    monkeypatch.delenv("MINIO_SECURE")
    monkeypatch.setenv("MINIO_ENDPOINT", "http://minio.example:9000")
    assert storage.s3_settings_from_env()["secure"] is False
    monkeypatch.setenv("MINIO_ENDPOINT", "https://minio.example")
    monkeypatch.setenv("MINIO_REGION", "eu-west-1")
    got = storage.s3_settings_from_env()
    assert (got["endpoint"], got["secure"], got["region"]) == ("minio.example", True, "eu-west-1")
    monkeypatch.setenv("MINIO_SECURE", "false")
    with pytest.raises(StorageError, match="contradicts"):
        storage.s3_settings_from_env()
    monkeypatch.setenv("MINIO_SECURE", "maybe")
    monkeypatch.setenv("MINIO_ENDPOINT", "minio.example:9000")
    with pytest.raises(StorageError, match="MINIO_SECURE must be true or false"):
        storage.s3_settings_from_env()
    monkeypatch.delenv("MINIO_SECURE")
    monkeypatch.setenv("MINIO_ENDPOINT", "http://minio.example:9000/path")
    with pytest.raises(StorageError, match="MINIO_ENDPOINT must be"):
        storage.s3_settings_from_env()
    assert SECRET not in repr(storage.s3_settings_from_env.__doc__)


def test_s3_secret_never_exposed(s3_env, s3_bucket, caplog, tmp_path, monkeypatch):
    caplog.set_level(logging.DEBUG)
    st = open_store(f"s3://{s3_bucket}/p")
    texts = [repr(st), str(st), repr(vars(st).keys())]
    texts += [repr(v) for k, v in vars(st).items() if k != "_client"]
    st.put_bytes("a.bin", b"a")
    for call in (
        lambda: st.stat("missing.bin"),
        lambda: open_store("s3://absent-bucket-xyz"),
        lambda: st.get_bytes("../etc/passwd"),
    ):
        with pytest.raises(StorageError) as info:
            call()
        texts += [str(info.value), repr(info.value)]
    # An unreachable server: the error names the endpoint, not the secret.
    monkeypatch.setenv("MINIO_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    dead = S3Store("s3://bucket-b", check_bucket=False, retry=RetryPolicy(attempts=2, first_wait_s=0.01))
    with pytest.raises(StorageUnavailableError, match=r"cannot reach http://127\.0\.0\.1.*after 2 attempts") as info:
        dead.stat("a")
    texts += [str(info.value), caplog.text]
    assert all(SECRET not in t for t in texts)


def test_local_store_open_does_not_create_and_write_errors_are_clear(tmp_path):
    st = open_store(str(tmp_path / "absent"))
    assert not (tmp_path / "absent").exists() and list(st.list()) == []
    st.put_bytes("a", b"1")  # the first write creates the folder
    with pytest.raises(StorageError, match="cannot write"):
        st.put_bytes("a/b", b"2")  # 'a' is a file
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="is not a folder"):
        LocalStore(tmp_path / "file")
