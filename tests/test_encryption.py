"""Encryption at rest and per-client key isolation of the object stores, against real S3 servers on loopback.

moto (5.2) acts on SSE-S3 and SSE-KMS (it stores the encryption and reports it on HEAD/GET) and on bucket default
encryption: those are tested end to end. It accepts SSE-C headers but ignores them (it returns the object without
the key), so for SSE-C the test checks the request headers the minio client sends, over TLS, through a recording
front of moto's own app (tests/s3_servers.py), and that the data round-trips.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import uuid
from pathlib import Path

import pytest
from s3_servers import ACCESS, SECRET, moto_http, moto_https

from components.common.config import ConfigError
from components.common.encryption import EncryptionConfig, sse_c_key
from components.common.storage import (
    InvalidKeyError,
    LocalStore,
    S3Store,
    StorageError,
    UnencryptedObjectError,
    open_store,
)
from components.config import from_dict
from serving.querylog import ClientStores

KEY_B64 = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(scope="module")
def moto():
    with moto_http() as endpoint:
        yield endpoint


@pytest.fixture()
def s3(moto, monkeypatch):
    monkeypatch.setenv("MINIO_ENDPOINT", moto)
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    for name in ("MINIO_SECURE", "MINIO_REGION"):
        monkeypatch.delenv(name, raising=False)
    from minio import Minio

    client = Minio(moto.split("://")[1], access_key=ACCESS, secret_key=SECRET, secure=False)
    bucket = f"clipsync-enc-{uuid.uuid4().hex[:10]}"
    client.make_bucket(bucket)
    return client, bucket


def _sse_headers(client, bucket: str, name: str) -> dict[str, str]:
    meta = client.stat_object(bucket, name).metadata
    return {k.lower(): v for k, v in meta.items() if "encryption" in k.lower()}


def test_sse_s3_and_sse_kms_writes_are_encrypted_on_the_server(s3, tmp_path):
    client, bucket = s3
    s3_store = open_store(f"s3://{bucket}/acme", EncryptionConfig(mode="sse-s3"))
    s3_store.put_bytes("runs/lease.json", b"{}")
    src = tmp_path / "ckpt.bin"
    src.write_bytes(os.urandom(1000))
    s3_store.put_file("checkpoints/c.bin", src)
    assert _sse_headers(client, bucket, "acme/runs/lease.json") == {"x-amz-server-side-encryption": "AES256"}
    assert _sse_headers(client, bucket, "acme/checkpoints/c.bin")["x-amz-server-side-encryption"] == "AES256"
    assert s3_store.get_bytes("runs/lease.json") == b"{}"
    assert s3_store.get_file("checkpoints/c.bin", tmp_path / "back.bin").read_bytes() == src.read_bytes()

    kms = open_store(f"s3://{bucket}/beta", EncryptionConfig(mode="sse-kms", kms_key_id="beta-key"))
    kms.put_bytes("models/x", b"weights")
    headers = _sse_headers(client, bucket, "beta/models/x")
    assert headers["x-amz-server-side-encryption"] == "aws:kms"
    assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == "beta-key"
    assert kms.get_bytes("models/x") == b"weights" and kms.stat("models/x").size == 7


def test_reading_an_unencrypted_object_where_encryption_is_required_is_refused(s3, tmp_path):
    client, bucket = s3
    client.put_object(bucket, "acme/runs/lease.json", io.BytesIO(b"{}"), 2)  # written without encryption
    plain = open_store(f"s3://{bucket}/acme")
    assert plain.get_bytes("runs/lease.json") == b"{}"
    required = open_store(f"s3://{bucket}/acme", EncryptionConfig(mode="sse-s3"))
    for read in (
        lambda: required.get_bytes("runs/lease.json"),
        lambda: required.get_file("runs/lease.json", tmp_path / "x"),
        lambda: required.stat("runs/lease.json"),
    ):
        with pytest.raises(UnencryptedObjectError, match=r"written without server-side encryption.*encryption.mode"):
            read()
    assert not (tmp_path / "x").exists()


def test_kept_per_video_results_are_written_and_read_with_the_clients_encryption(s3):
    import numpy as np

    from components.common.result_cache import ResultCache

    client, bucket = s3
    cache = ResultCache(f"s3://{bucket}/acme", "frame_extraction", EncryptionConfig(mode="sse-kms", kms_key_id="k1"))
    key = cache.key(sha256="ab" * 32, settings={"search_size": 32})
    frames = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert cache.get(key) is None
    cache.put(key, {"status": "ok"}, {"search_frames": frames})
    headers = _sse_headers(client, bucket, f"acme/{cache.object_key(key)}")
    assert headers["x-amz-server-side-encryption"] == "aws:kms"
    assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == "k1"
    meta, arrays = cache.get(key)
    assert meta == {"status": "ok"} and np.array_equal(arrays["search_frames"], frames)
    # An object someone wrote in plain text is refused, not silently used.
    client.put_object(bucket, f"acme/{cache.object_key('0' * 64)}", io.BytesIO(b"x"), 1)
    with pytest.raises(UnencryptedObjectError):
        cache.get("0" * 64)


def test_bucket_default_encryption_covers_other_writers(s3):
    from minio.sseconfig import Rule, SSEConfig

    client, bucket = s3
    client.set_bucket_encryption(bucket, SSEConfig(Rule.new_sse_kms_rule("acme-key")))
    client.put_object(bucket, "acme/pipeline-root/frames/0.jpg", io.BytesIO(b"jpg"), 3)  # KFP's launcher: no SSE
    store = open_store(f"s3://{bucket}/acme", EncryptionConfig(mode="sse-kms", kms_key_id="acme-key"))
    assert store.get_bytes("pipeline-root/frames/0.jpg") == b"jpg"


def test_sse_c_settings_are_refused_with_the_setting_named(s3, monkeypatch):
    _client, bucket = s3
    config = EncryptionConfig(mode="sse-c")
    monkeypatch.delenv("CLIPSYNC_SSE_C_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"encryption.sse_c_key_env: variable CLIPSYNC_SSE_C_KEY is not set"):
        sse_c_key(config)
    with pytest.raises(ConfigError, match="not valid base64"):
        sse_c_key(config, {"CLIPSYNC_SSE_C_KEY": "not base64!"})
    with pytest.raises(ConfigError, match="holds 16 bytes; SSE-C needs 32"):
        sse_c_key(config, {"CLIPSYNC_SSE_C_KEY": base64.b64encode(b"k" * 16).decode()})
    monkeypatch.setenv("CLIPSYNC_SSE_C_KEY", KEY_B64)
    with pytest.raises(StorageError, match=r"sse-c sends the client's key with every request: .* must be https"):
        S3Store(f"s3://{bucket}", encryption=config)
    with pytest.raises(ConfigError, match=r"encryption.kms_key_id must name"):
        from_dict({"encryption": {"mode": "sse-kms"}})


@contextlib.contextmanager
def sse_c_bucket(tmp_path: Path, monkeypatch, prefix: str):
    """A new bucket on moto over TLS, this process's MinIO settings and SSE-C key pointing at it; yields the bucket
    and moto's record of the requests (method, path, headers)."""
    from minio import Minio

    with moto_https(tmp_path) as (endpoint, cert, seen):
        settings = {"MINIO_ENDPOINT": endpoint, "MINIO_ACCESS_KEY": ACCESS, "MINIO_SECRET_KEY": SECRET}
        for name, value in {**settings, "SSL_CERT_FILE": str(cert), "CLIPSYNC_SSE_C_KEY": KEY_B64}.items():
            monkeypatch.setenv(name, value)
        bucket = f"{prefix}-{uuid.uuid4().hex[:8]}"
        Minio(endpoint.split("://")[1], access_key=ACCESS, secret_key=SECRET, secure=True).make_bucket(bucket)
        yield bucket, seen


def test_sse_c_sends_the_customer_key_headers_over_tls(tmp_path, monkeypatch):
    with sse_c_bucket(tmp_path, monkeypatch, "clipsync-ssec") as (bucket, seen):
        store = open_store(f"s3://{bucket}/acme", EncryptionConfig(mode="sse-c"))
        seen.clear()
        store.put_bytes("models/adapter.safetensors", b"adapter")
        assert store.get_bytes("models/adapter.safetensors") == b"adapter"
        assert store.stat("models/adapter.safetensors").size == 7
    key_md5 = base64.b64encode(hashlib.md5(bytes(range(32))).digest()).decode()
    object_calls = [(m, h) for m, p, h in seen if p.endswith("/acme/models/adapter.safetensors")]
    assert [m for m, _ in object_calls] == ["PUT", "HEAD", "GET", "HEAD"]  # put + its stat, get, stat
    for method, headers in object_calls:
        assert headers["x-amz-server-side-encryption-customer-algorithm"] == "AES256", method
        assert headers["x-amz-server-side-encryption-customer-key"] == KEY_B64, method
        assert headers["x-amz-server-side-encryption-customer-key-md5"] == key_md5, method


# ------------------------------------------------------------------ keys of one client never reach another's


CRAFTED_KEYS = [
    "../acme-2/videos/x.mp4",
    "../acme-2",
    "videos/../../acme-2/x",
    "/acme-2/x",
    "acme-2/../../x",
    "..\\acme-2\\x",
    "s3://clipsync-artifacts/acme-2/x",
    "./../acme-2/x",
    "x/\x00/../acme-2",
]
# Literal names: stay inside the client's own prefix, whatever they look like.
LITERAL_KEYS = ["%2e%2e/acme-2/x", "..%2facme-2%2fx", "\u2024\u2024/acme-2/x", "acme-2/x", "...", "..a/acme-2"]


def _assert_confined(store, other_listing) -> None:
    for key in CRAFTED_KEYS:
        with pytest.raises(InvalidKeyError):
            store.put_bytes(key, b"evil")
        with pytest.raises(InvalidKeyError):
            store.get_bytes(key)
    for key in LITERAL_KEYS:
        store.put_bytes(key, b"mine")
        assert store.get_bytes(key) == b"mine"
    assert other_listing() == ["videos/x.mp4"]


def test_crafted_keys_never_reach_another_clients_prefix_on_s3(s3):
    client, bucket = s3
    other = open_store(f"s3://{bucket}/acme-2")
    other.put_bytes("videos/x.mp4", b"theirs")
    mine = open_store(f"s3://{bucket}/acme")
    _assert_confined(mine, lambda: list(other.list_keys()))
    # acme's listing holds only its own objects although "acme" is a string prefix of "acme-2"
    assert sorted(mine.list_keys()) == sorted(LITERAL_KEYS)
    assert sorted(o.object_name for o in client.list_objects(bucket, "acme-2/", recursive=True)) == [
        "acme-2/videos/x.mp4"
    ]
    with pytest.raises(InvalidKeyError):
        open_store(f"s3://{bucket}/acme/../acme-2")
    # the shared server's per-client query-log stores: a crafted model name cannot pick another prefix
    stores = ClientStores(f"s3://{bucket}/{{client}}")
    with pytest.raises(InvalidKeyError):
        stores("clip-acme/../acme-2")
    assert stores("clip-acme").uri == f"s3://{bucket}/acme"


def test_crafted_keys_never_reach_another_clients_folder_locally(tmp_path: Path):
    other = LocalStore(tmp_path / "artifacts" / "acme-2", create=True)
    other.put_bytes("videos/x.mp4", b"theirs")
    mine = LocalStore(tmp_path / "artifacts" / "acme", create=True)
    _assert_confined(mine, lambda: list(other.list_keys()))
    assert sorted(mine.list_keys()) == sorted(LITERAL_KEYS)
    (tmp_path / "artifacts" / "acme" / "link").symlink_to(tmp_path / "artifacts" / "acme-2")
    with pytest.raises(StorageError, match="leads outside the store"):
        mine.put_bytes("link/videos/x.mp4", b"evil")
    assert other.get_bytes("videos/x.mp4") == b"theirs"


@pytest.mark.slow
def test_feedback_and_monitor_stages_read_an_sse_c_clients_feedback_with_its_key(tmp_path, monkeypatch):
    """The model server writes an SSE-C client's feedback and query log with the client's key; the feedback stage,
    the monitor stage and ``clipsync feedback export`` must send that key to read them (moto ignores it, so the
    requests' headers are the evidence)."""
    import json

    pytest.importorskip("evidently")
    from components.feedback.core import run_feedback
    from components.monitor.core import run_monitor
    from serving.feedback import feedback_store, read_feedback

    with sse_c_bucket(tmp_path, monkeypatch, "clipsync-fb") as (bucket, seen):
        config = from_dict(
            {
                "client_id": "acme",
                "state_dir": str(tmp_path / "state"),
                "storage": {"artifacts_uri": f"s3://{bucket}/acme"},
                "encryption": {"mode": "sse-c"},
                "window": {"as_of": "2026-11-01"},
            }
        )
        written = open_store(config.storage.artifacts_uri, config.encryption)  # as the model server writes them
        answer = {"ts": "2026-10-05T10:00:00+00:00", "feedback_id": "f1", "query_id": "q1", "video_id": "v1"}
        answer |= {"relevant": True, "query": "gallbladder op", "label": ""}
        written.put_bytes("feedback/clip-acme/2026-10/a.jsonl", (json.dumps(answer) + "\n").encode())
        search = {"ts": "2026-10-05T09:59:00+00:00", "query_id": "q2", "query": "tower crane", "confidence": 0.1}
        written.put_bytes(
            "querylog/clip-acme/2026-10/a.jsonl", (json.dumps(search | {"low_confidence": True}) + "\n").encode()
        )
        seen.clear()
        data = run_feedback(tmp_path / "fb", config.feedback, config.context(track=False), serving=config.serving)
        assert [(r.kind, r.video_id, r.text) for r in data.records] == [("label", "v1", "gallbladder op")]
        assert [i.query for i in data.review] == ["tower crane"]
        assert [e["feedback_id"] for e in read_feedback(feedback_store(config), "clip-acme", "2026-10")] == ["f1"]
        ctx = config.context(track=False)
        report = run_monitor(None, None, tmp_path / "monitor", config.monitor, ctx, serving=config.serving)
        assert report.month == "2026-10" and written.exists("monitor/clip-acme/2026-10/summary.json")
    object_calls = [(m, p, h) for m, p, h in seen if m in ("GET", "PUT", "HEAD") and "/acme/" in p]
    reads = [p for m, p, _ in object_calls if m == "GET"]
    assert any(p.endswith("feedback/clip-acme/2026-10/a.jsonl") for p in reads)
    assert any(p.endswith("querylog/clip-acme/2026-10/a.jsonl") for p in reads)
    assert any(m == "PUT" and p.endswith("review/clip-acme/2026-10/review_queue.csv") for m, p, _ in object_calls)
    assert sum(p.endswith("querylog/clip-acme/2026-10/a.jsonl") for p in reads) >= 2  # feedback and monitor
    for method, path, headers in object_calls:
        assert headers.get("x-amz-server-side-encryption-customer-key") == KEY_B64, (method, path)
