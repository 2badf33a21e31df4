"""One small interface over object URIs: a local folder (the embedded default) or MinIO / S3.

Keys are relative, ``/``-separated object names (``videos/clip_001.mp4``). Every key a method receives
passes :func:`validate_key`, so a key can never escape the store's root (no ``..``, no absolute path).
There is deliberately no delete: nothing a client uploaded is ever removed by clipsync.

S3 connection settings come only from the environment, read when an :class:`S3Store` is created:
``MINIO_ENDPOINT`` (``host:port`` or ``http(s)://host:port``), ``MINIO_ACCESS_KEY``, ``MINIO_SECRET_KEY``,
``MINIO_SECURE`` (``true``/``false``; default true unless the endpoint URL says ``http``) and the optional
``MINIO_REGION``. The secret key is never stored on the object, logged or put in an error message.

Faults of the server are told apart from problems of an object: an unreachable server, a timeout, a 5xx or a
throttling answer is a :class:`StorageUnavailableError` (retried with bounded backoff, see
:mod:`components.common.faults`, then raised with the cause), refused credentials a :class:`StorageAccessError`
(raised at once); both fail the stage. A missing object is an :class:`ObjectNotFoundError`, an unsafe key an
:class:`InvalidKeyError`: problems of that one object.

Encryption at rest (``encryption`` section, :mod:`components.common.encryption`): an :class:`S3Store` opened with
an :class:`EncryptionConfig` other than ``none`` writes every object with SSE-S3, SSE-KMS or SSE-C (the ``minio``
client's ``sse`` classes) and refuses to read back an object written without it (:class:`UnencryptedObjectError`).
A local folder is written as it is: the encryption of its volume applies.

A local folder never reaches outside its root: a symbolic link (of the object or of a folder on its way) that
resolves outside the root is refused on read and on write (:class:`OutsideStoreError`).

Why this file is long: the two stores (a local folder, S3) implement one interface
and share its key checks and fault classification; apart they would repeat both.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from components.common.encryption import EncryptionConfig
from components.common.faults import InfrastructureError, RetryPolicy, TransientError, retry_call

logger = logging.getLogger("clipsync.storage")

MAX_KEY_BYTES = 1024
DEFAULT_PART_SIZE = 64 * 1024 * 1024
_TMP_PREFIX = ".clipsync-tmp-"
#: Per-attempt socket timeouts of the S3 client (minio's own default is 5 minutes, and 5 silent retries).
S3_CONNECT_TIMEOUT_S = 10.0
S3_READ_TIMEOUT_S = 60.0
# S3 error codes of a server that is failing or throttling (worth retrying) and of refused credentials.
_S3_TRANSIENT_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "XMinioServerNotInitialized"}
)
_S3_ACCESS_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "AccountProblem"}
)


class StorageError(Exception):
    """An object store could not be opened or an operation on it failed."""


class InvalidKeyError(StorageError, ValueError):
    """A key (or prefix) is not a safe relative object name."""


class ObjectNotFoundError(StorageError, KeyError):
    """The requested object does not exist."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class OutsideStoreError(StorageError):
    """A local key resolves (through a symbolic link) to a place outside the store's root."""


class StorageUnavailableError(StorageError, TransientError):
    """The store cannot be reached, timed out, or answered with a server error or throttling."""


class StorageAccessError(StorageError, InfrastructureError):
    """The store refused the credentials (not retried: they will not get better by waiting)."""


class UnencryptedObjectError(StorageError):
    """An object read back was not written with the server-side encryption the config requires (or the server
    refused the read because the encryption parameters do not fit the object)."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object.

    Attributes:
        key: Object key relative to the store's root.
        size: Size in bytes.
        last_modified: Last modification time, timezone-aware UTC.
        etag: The server's entity tag without quotes (``<md5>-<parts>`` for multipart uploads on S3);
            empty for a local folder.
        refused: Empty for a readable object. Listed only with ``include_refused``: why the store refuses to
            read it, ``"code: detail"`` with code ``bad_name`` (the name is not a valid key; ``key`` is then the
            raw name) or ``bad_link`` (a symbolic link out of a local store's root, or to nothing).
    """

    key: str
    size: int
    last_modified: datetime
    etag: str = ""
    refused: str = ""


def validate_key(key: str) -> str:
    """Check that ``key`` is a safe relative object name and return it.

    A valid key is a non-empty string of ``/``-separated segments, none of them empty, ``.`` or ``..``,
    without a leading ``/``, backslashes, NUL or other control characters, at most 1024 UTF-8 bytes.
    Keys are not rewritten: a key in non-canonical form (``a//b``, ``./a``) is refused rather than guessed.

    Args:
        key: The candidate key.

    Returns:
        The key, unchanged.

    Raises:
        InvalidKeyError: With the rule the key broke.
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"object key must be a string, got {type(key).__name__}")
    if not key:
        raise InvalidKeyError("object key must not be empty")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:  # a file name that was not UTF-8 on disk (surrogate escapes)
        raise InvalidKeyError(f"object key {key!r} is not valid UTF-8") from None
    if "\x00" in key:
        raise InvalidKeyError(f"object key {key!r} contains a NUL character")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise InvalidKeyError(f"object key {key!r} contains a control character")
    if "\\" in key:
        raise InvalidKeyError(f"object key {key!r} contains a backslash; use '/' as the separator")
    if key.startswith("/"):
        raise InvalidKeyError(f"object key {key!r} is absolute; keys are relative to the store's root")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"object key is longer than {MAX_KEY_BYTES} bytes: {key[:60]!r}...")
    if "://" in key:
        raise InvalidKeyError(f"object key {key!r} looks like a URI; pass the key relative to the store")
    for segment in key.split("/"):
        if segment == "..":
            raise InvalidKeyError(f"object key {key!r} contains a '..' segment (path traversal)")
        if segment == ".":
            raise InvalidKeyError(f"object key {key!r} contains a '.' segment")
        if segment == "":
            raise InvalidKeyError(f"object key {key!r} has an empty segment (leading, trailing or double '/')")
    return key


def _note_refused(uri: str, key: str, refused: str, listed: bool) -> None:
    logger.warning("%s %r in %s: %s", "listing" if listed else "skipping", key, uri, refused)


def _validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key-like string that may end in one ``/``."""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"prefix must be a string, got {type(prefix).__name__}")
    if prefix == "":
        return prefix
    body = prefix[:-1] if prefix.endswith("/") else prefix
    try:
        validate_key(body)
    except InvalidKeyError as exc:
        raise InvalidKeyError(f"invalid prefix {prefix!r}: {exc}") from None
    return prefix


class ObjectStore(abc.ABC):
    """Read and write objects under one root URI. No delete, on purpose.

    Attributes:
        uri: The root URI (a local absolute path, or ``s3://bucket[/prefix]``).
    """

    uri: str

    @abc.abstractmethod
    def uri_for(self, key: str) -> str:
        """The full location of ``key`` (a local path or ``s3://bucket/prefix/key``)."""

    @abc.abstractmethod
    def list(self, prefix: str = "", *, include_refused: bool = False) -> Iterator[ObjectInfo]:
        """All objects whose key starts with ``prefix``, recursively, sorted by key.

        Objects the store refuses to read (a name that is not a valid key, a local symbolic link out of the
        root) are skipped with a warning, or listed with :attr:`ObjectInfo.refused` set when
        ``include_refused`` is true (so that a caller can account for every object).
        """

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, modification time and etag of ``key``; :class:`ObjectNotFoundError` if absent."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object in memory (for small objects such as label files)."""

    @abc.abstractmethod
    def get_file(self, key: str, dest: Path) -> Path:
        """Stream the object to ``dest`` (parents created, written atomically); returns ``dest``."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Write ``data`` as ``key`` (replacing an object of that key); returns its info."""

    @abc.abstractmethod
    def put_file(self, key: str, src: Path, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Upload the file ``src`` as ``key`` (multipart on S3 for large files); returns its info."""

    @abc.abstractmethod
    def local_path(self, key: str) -> Path | None:
        """The object's own file when the store is a local folder (no copy), else ``None``."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists (invalid keys raise :class:`InvalidKeyError`, they are not just absent)."""
        try:
            self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """The keys of :meth:`list`."""
        for info in self.list(prefix):
            yield info.key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(ObjectStore):
    """A local folder as an object store; writes are atomic (temporary file + rename).

    A key whose path leads outside the root through a symbolic link is refused (:class:`OutsideStoreError`).
    """

    def __init__(self, root: str | Path, *, create: bool = False) -> None:
        """Open the folder ``root``.

        Opening does not create the folder (a store that is only read is never modified); the first
        write creates it. A missing folder lists as empty.

        Args:
            root: The folder; relative paths are resolved against the current directory.
            create: Create the folder now.

        Raises:
            StorageError: If ``root`` exists and is not a folder.
        """
        path = Path(root).expanduser().resolve()
        if create:
            path.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_dir():
            raise StorageError(f"local store root {str(path)!r} is not a folder")
        self.root = path
        self.uri = str(path)

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        if not path.resolve().is_relative_to(self.root):
            raise OutsideStoreError(
                f"object {key!r} in {self.uri} is (or lies below) a symbolic link that leads outside the store"
            )
        return path

    def uri_for(self, key: str) -> str:
        return str(self._path(key))

    def _info(self, key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(key=key, size=st.st_size, last_modified=datetime.fromtimestamp(st.st_mtime, tz=UTC))

    def _refusal(self, key: str, path: Path) -> str:
        """Why the file ``path`` listed as ``key`` cannot be read as an object (``""`` if it can)."""
        try:
            validate_key(key)
        except InvalidKeyError as exc:
            return f"bad_name: {exc}"
        if path.is_symlink():
            if not path.resolve().is_relative_to(self.root):
                return "bad_link: a symbolic link that leads outside the store"
            if not path.is_file():
                return "bad_link: a symbolic link to nothing"
        return ""

    def list(self, prefix: str = "", *, include_refused: bool = False) -> Iterator[ObjectInfo]:
        _validate_prefix(prefix)
        # Only walk the folder the prefix points into; the prefix itself is matched as a string (S3 semantics).
        # Symbolic links to folders are not followed (os.walk's default).
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not start.is_dir() or not start.resolve().is_relative_to(self.root):
            return
        found: list[tuple[str, Path, str]] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                path = Path(dirpath) / name
                refused = self._refusal(key, path)
                if refused:
                    _note_refused(self.uri, key, refused, include_refused)
                    if not include_refused:
                        continue
                found.append((key, path, refused))
        for key, path, refused in sorted(found):
            if refused:
                st = path.lstat()
                modified = datetime.fromtimestamp(st.st_mtime, tz=UTC)
                yield ObjectInfo(key=key, size=0, last_modified=modified, refused=refused)
            elif path.is_file():
                yield self._info(key, path)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self.uri}")
        return self._info(key, path)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self.uri}")
        return path.read_bytes()

    def get_file(self, key: str, dest: Path) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {self.uri}")
        dest = Path(dest)
        with open(path, "rb") as src:
            _atomic_write(dest, lambda fh: shutil.copyfileobj(src, fh, 1024 * 1024))
        return dest

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        path = self._path(key)
        _atomic_write(path, lambda fh: fh.write(data))
        return self._info(key, path)

    def put_file(self, key: str, src: Path, content_type: str = "application/octet-stream") -> ObjectInfo:
        path = self._path(key)
        src = Path(src)
        if not src.is_file():
            raise StorageError(f"cannot upload {str(src)!r}: not a file")
        with open(src, "rb") as fh_in:
            _atomic_write(path, lambda fh: shutil.copyfileobj(fh_in, fh, 1024 * 1024))
        return self._info(key, path)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


def _atomic_write(dest: Path, write: Any) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=dest.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {str(dest)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise StorageError(f"environment variable {name} is not set (needed to open an s3:// store)")
    return value


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise StorageError(f"{name} must be true or false, got {value!r}")


def s3_settings_from_env() -> dict[str, Any]:
    """The MinIO connection settings from the environment (without the secret key).

    Returns:
        ``endpoint`` (host:port), ``secure`` (bool), ``region`` (str or None), ``access_key``.

    Raises:
        StorageError: Naming the missing or malformed variable.
    """
    raw = _env("MINIO_ENDPOINT").strip()
    access_key = _env("MINIO_ACCESS_KEY")
    _env("MINIO_SECRET_KEY")
    secure_default = True
    endpoint = raw
    if "://" in raw:
        parsed = urlparse(raw)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path not in ("", "/"):
            raise StorageError(f"MINIO_ENDPOINT must be host:port or http(s)://host:port, got {raw!r}")
        endpoint = parsed.netloc
        secure_default = parsed.scheme == "https"
    elif "/" in raw or not raw:
        raise StorageError(f"MINIO_ENDPOINT must be host:port or http(s)://host:port, got {raw!r}")
    secure = secure_default
    if os.environ.get("MINIO_SECURE"):
        secure = _parse_bool("MINIO_SECURE", os.environ["MINIO_SECURE"])
        if "://" in raw and secure != secure_default:
            raise StorageError(f"MINIO_SECURE={os.environ['MINIO_SECURE']} contradicts MINIO_ENDPOINT {raw!r}")
    region = os.environ.get("MINIO_REGION") or None
    return {"endpoint": endpoint, "secure": secure, "region": region, "access_key": access_key}


def _parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not bucket:
        raise StorageError(f"no bucket in {uri!r} (expected s3://bucket[/prefix])")
    if prefix:
        try:
            validate_key(prefix)
        except InvalidKeyError as exc:
            raise InvalidKeyError(f"invalid prefix in {uri!r}: {exc}") from None
    return bucket, prefix + "/" if prefix else ""


class S3Store(ObjectStore):
    """MinIO or any S3-compatible server through the ``minio`` client; root ``s3://bucket[/prefix]``."""

    def __init__(
        self,
        uri: str,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        check_bucket: bool = True,
        retry: RetryPolicy | None = None,
        encryption: EncryptionConfig | None = None,
    ) -> None:
        """Connect with the ``MINIO_*`` environment variables.

        Args:
            uri: ``s3://bucket`` or ``s3://bucket/prefix``; keys are relative to the prefix.
            part_size: Multipart part size for :meth:`put_file` (at least 5 MiB, the S3 minimum);
                files larger than it are uploaded in parts.
            check_bucket: Check now that the bucket exists (one request).
            retry: How transient faults are retried; default :meth:`RetryPolicy.from_env`.
            encryption: Server-side encryption of every write, required of every read (default: none).

        Raises:
            StorageError: A setting is missing or the bucket does not exist.
            ConfigError: The SSE-C key variable is missing or malformed (naming ``encryption.sse_c_key_env``).
            StorageUnavailableError: The server cannot be reached (after the retries).
            StorageAccessError: The server refuses the credentials.
        """
        import certifi
        import urllib3
        from minio import Minio
        from minio.helpers import check_bucket_name

        self.bucket, self._prefix = _parse_s3_uri(uri)
        try:
            check_bucket_name(self.bucket)
        except ValueError as exc:
            raise StorageError(f"invalid bucket name in {uri!r}: {exc}") from None
        self.uri = f"s3://{self.bucket}/{self._prefix}".rstrip("/")
        if part_size < 5 * 1024 * 1024:
            raise StorageError(f"part_size must be at least 5 MiB, got {part_size}")
        self.part_size = part_size
        self.retry = retry or RetryPolicy.from_env()
        settings = s3_settings_from_env()
        self.endpoint = settings["endpoint"]
        self.secure = settings["secure"]
        from components.common.encryption import read_ssec, write_sse

        self.encryption = encryption or EncryptionConfig()
        if self.encryption.mode == "sse-c" and not self.secure:
            raise StorageError(
                f"encryption.mode sse-c sends the client's key with every request: {self._where()} must be https "
                "(MINIO_ENDPOINT https://..., MINIO_SECURE true)"
            )
        self._sse, self._ssec = write_sse(self.encryption), read_ssec(self.encryption)
        # Bounded socket timeouts and no hidden retries in urllib3: every retry is :func:`retry_call`'s.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=S3_CONNECT_TIMEOUT_S, read=S3_READ_TIMEOUT_S),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=False,
        )
        try:
            self._client = Minio(
                self.endpoint,
                access_key=settings["access_key"],
                secret_key=os.environ["MINIO_SECRET_KEY"],
                secure=self.secure,
                region=settings["region"],
                http_client=http,
            )
        except ValueError as exc:
            raise StorageError(f"cannot use MINIO_ENDPOINT {self.endpoint!r}: {exc}") from None
        if check_bucket:
            found = self._call("bucket_exists", lambda: self._client.bucket_exists(self.bucket))
            if not found:
                raise StorageError(f"bucket {self.bucket!r} does not exist on {self._where()}")

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r}, secure={self.secure})"

    def _where(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def _name(self, key: str) -> str:
        return self._prefix + validate_key(key)

    def _call(self, what: str, fn: Any, key: str | None = None) -> Any:
        """Run one S3 request; transient faults are retried (bounded), every error is translated."""
        return retry_call(f"{what} {key or ''} on {self.uri}", lambda: self._call_once(what, fn, key), self.retry)

    def _call_once(self, what: str, fn: Any, key: str | None) -> Any:
        import urllib3.exceptions
        from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

        target, where = f"{what} {key or ''} on {self.uri}".replace("  ", " "), self._where()
        try:
            return fn()
        except S3Error as exc:
            status = exc.response.status if exc.response is not None else 0
            if exc.code in ("NoSuchKey", "NoSuchObject") and key is not None:
                raise ObjectNotFoundError(f"no object {key!r} in {self.uri}") from None
            if exc.code == "NoSuchBucket":
                raise StorageError(f"bucket {self.bucket!r} does not exist on {self._where()}") from None
            if exc.code in ("InvalidRequest", "InvalidArgument") and "ncrypt" in (exc.message or ""):
                raise UnencryptedObjectError(
                    f"{target}: {where} refused the encryption parameters (encryption.mode "
                    f"{self.encryption.mode}): {exc.message}"
                ) from None
            if exc.code in _S3_ACCESS_CODES or status in (401, 403):
                raise StorageAccessError(f"{target}: {where} refused the credentials ({exc.code})") from None
            if exc.code in _S3_TRANSIENT_CODES or status >= 500:
                raise StorageUnavailableError(f"{target} failed on {where}: {exc.code}: {exc.message}") from None
            raise StorageError(f"{target} failed: {exc.code}: {exc.message}") from None
        except (ServerError, InvalidResponseError) as exc:
            status = exc.status_code if isinstance(exc, ServerError) else getattr(exc, "_code", 0)  # kept private
            if status in (401, 403):
                raise StorageAccessError(f"{target}: {where} refused the credentials (HTTP {status})") from None
            if status >= 500 or status == 429:
                raise StorageUnavailableError(f"{target} failed on {where}: HTTP {status}") from None
            raise StorageError(f"{target} failed: HTTP {status} ({type(exc).__name__})") from None
        except MinioException as exc:
            raise StorageError(f"{target} failed: {type(exc).__name__}: {exc}") from None
        except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            raise StorageUnavailableError(f"cannot reach {where} ({target}): {type(exc).__name__}") from None

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._name(key)}"

    def _check_encrypted(self, headers: Any, key: str) -> None:
        """Refuse an object without server-side encryption when the config requires it (SSE-S3 / SSE-KMS: the
        server names the object's encryption in ``x-amz-server-side-encryption``; for SSE-C the server itself
        refuses a read whose key headers do not fit the object)."""
        if self.encryption.mode in ("sse-s3", "sse-kms") and not headers.get("x-amz-server-side-encryption"):
            raise UnencryptedObjectError(
                f"object {key!r} in {self.uri} was written without server-side encryption, but encryption.mode is "
                f"{self.encryption.mode}: refusing to read it (re-write it encrypted, or set encryption.mode: none)"
            )

    def _to_info(self, key: str, size: int, last_modified: datetime | None, etag: str | None) -> ObjectInfo:
        modified = last_modified or datetime.fromtimestamp(0, tz=UTC)
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        return ObjectInfo(
            key=key, size=int(size or 0), last_modified=modified.astimezone(UTC), etag=(etag or "").strip('"')
        )

    def list(self, prefix: str = "", *, include_refused: bool = False) -> Iterator[ObjectInfo]:
        _validate_prefix(prefix)
        objects = self._call(
            "list",
            lambda: list(self._client.list_objects(self.bucket, prefix=self._prefix + prefix, recursive=True)),
        )
        infos = []
        for obj in objects:
            if obj.is_dir:
                continue
            key = obj.object_name[len(self._prefix) :]
            refused = ""
            try:
                validate_key(key)
            except InvalidKeyError as exc:
                refused = f"bad_name: {exc}"
                _note_refused(self.uri, key, refused, include_refused)
                if not include_refused:
                    continue
            info = self._to_info(key, obj.size, obj.last_modified, obj.etag)
            infos.append(dataclasses.replace(info, refused=refused) if refused else info)
        yield from sorted(infos, key=lambda info: info.key)

    def stat(self, key: str) -> ObjectInfo:
        name = self._name(key)
        obj = self._call("stat", lambda: self._client.stat_object(self.bucket, name, ssec=self._ssec), key)
        self._check_encrypted(obj.metadata, key)
        return self._to_info(key, obj.size, obj.last_modified, obj.etag)

    def get_bytes(self, key: str) -> bytes:
        name = self._name(key)

        def fetch() -> bytes:
            response = self._client.get_object(self.bucket, name, ssec=self._ssec)
            try:
                self._check_encrypted(response.headers, key)
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("get", fetch, key)

    def get_file(self, key: str, dest: Path) -> Path:
        name = self._name(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def fetch() -> None:
            response = self._client.get_object(self.bucket, name, ssec=self._ssec)
            try:
                self._check_encrypted(response.headers, key)
                _atomic_write(dest, lambda fh: shutil.copyfileobj(response, fh, 1024 * 1024))
            finally:
                response.close()
                response.release_conn()

        self._call("get", fetch, key)
        return dest

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        import io

        name = self._name(key)
        self._call(
            "put",
            lambda: self._client.put_object(
                self.bucket, name, io.BytesIO(data), len(data), content_type=content_type, sse=self._sse
            ),
            key,
        )
        return self.stat(key)

    def put_file(self, key: str, src: Path, content_type: str = "application/octet-stream") -> ObjectInfo:
        name = self._name(key)
        src = Path(src)
        if not src.is_file():
            raise StorageError(f"cannot upload {str(src)!r}: not a file")
        self._call(
            "put",
            lambda: self._client.fput_object(
                self.bucket, name, str(src), content_type=content_type, part_size=self.part_size, sse=self._sse
            ),
            key,
        )
        return self.stat(key)

    def local_path(self, key: str) -> Path | None:
        validate_key(key)
        return None


def open_store(uri: str, encryption: EncryptionConfig | None = None) -> ObjectStore:
    """Open the store behind ``uri``.

    Args:
        uri: ``s3://bucket[/prefix]`` for MinIO/S3; ``file:///abs/path`` or a plain path for a local folder.
        encryption: Server-side encryption of an S3 store's writes, required of its reads (the client config's
            ``encryption`` section for what clipsync writes; none for the client's uploads). A local folder is
            written as it is (its volume's encryption applies).

    Returns:
        An :class:`S3Store` or a :class:`LocalStore`.

    Raises:
        StorageError: For an unsupported scheme or a store that cannot be opened.
    """
    if not isinstance(uri, str) or not uri:
        raise StorageError("store URI must be a non-empty string")
    if uri.startswith("s3://"):
        return S3Store(uri, encryption=encryption)
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file:// URI must name a local absolute path, got {uri!r}")
        return LocalStore(unquote(parsed.path))
    if "://" in uri:
        raise StorageError(f"unsupported store URI {uri!r} (use s3://bucket[/prefix], file:///path or a path)")
    return LocalStore(uri)


def fetch_to_local(store: ObjectStore, key: str, cache_dir: Path) -> Path:
    """A local file holding the object ``key``.

    For a local folder this is the object's own file (no copy). Otherwise the object is downloaded once
    to ``cache_dir / key``; a later call reuses that file when its size and modification time still
    match the object's.

    Args:
        store: The store to read from.
        key: The object key.
        cache_dir: Where downloaded objects are kept.

    Returns:
        The path of the local file (never modify it: it may be the client's original).

    Raises:
        ObjectNotFoundError: If the object does not exist.
    """
    own = store.local_path(key)
    if own is not None:
        if not own.is_file():
            raise ObjectNotFoundError(f"no object {key!r} in {store.uri}")
        return own
    info = store.stat(key)
    dest = Path(cache_dir) / validate_key(key)
    stamp = info.last_modified.timestamp()
    if dest.is_file():
        st = dest.stat()
        if st.st_size == info.size and abs(st.st_mtime - stamp) < 1e-3:
            return dest
    store.get_file(key, dest)
    os.utime(dest, (stamp, stamp))
    return dest
