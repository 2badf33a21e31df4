"""Server-side encryption of what clipsync writes to MinIO / S3 (the ``encryption`` section of a client's config).

Modes (``encryption.mode``):

- ``none``: no encryption headers (the embedded default: a local folder, whose volume's own encryption applies).
- ``sse-s3``: the server encrypts with its own keys (``x-amz-server-side-encryption: AES256``).
- ``sse-kms``: the server encrypts with the client's key in the KMS, ``encryption.kms_key_id``
  (``x-amz-server-side-encryption: aws:kms`` + the key id).
- ``sse-c``: the client's own 256-bit key, base64 in the variable ``encryption.sse_c_key_env`` (from the client's
  Kubernetes Secret), sent with every write and read (over TLS only; the server keeps no copy of the key).

The requests carry the ``minio`` client's own ``sse`` classes; nothing is encrypted here (no home-made crypto).
With a mode other than ``none``, an object read back must have been written encrypted: the store refuses a plain
object (``components.common.storage.UnencryptedObjectError``; for ``sse-c`` the server itself refuses a read whose
key does not fit the object). Onboarding turns on the buckets' default encryption (:func:`bucket_default_rule`) so
that what other writers put there (KFP's launcher: frames and crops, the model servers' query logs) is encrypted too.

Standard library only at module level (kfp wrappers and ``pipelines/`` import the config).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.common.errors import ConfigError, require

MODES = ("none", "sse-s3", "sse-kms", "sse-c")
_ENV_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass(frozen=True)
class EncryptionConfig:
    """Server-side encryption of the objects clipsync writes to MinIO / S3.

    Attributes:
        mode: ``none``, ``sse-s3``, ``sse-kms`` or ``sse-c`` (see the module docstring).
        kms_key_id: The client's KMS key (``sse-kms`` only; required there).
        sse_c_key_env: The variable holding the client's base64 256-bit key (``sse-c`` only), filled from the
            client's Secret (key ``CLIPSYNC_SSE_C_KEY`` of ``clipsync-minio-<client>``).
    """

    mode: str = "none"
    kms_key_id: str = ""
    sse_c_key_env: str = "CLIPSYNC_SSE_C_KEY"

    def __post_init__(self) -> None:
        require(self.mode in MODES, f"encryption.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "sse-kms":
            require(bool(self.kms_key_id.strip()), "encryption.kms_key_id must name the client's KMS key for sse-kms")
        else:
            require(not self.kms_key_id, f"encryption.kms_key_id is only used with sse-kms (mode is {self.mode})")
        require(
            bool(self.sse_c_key_env) and set(self.sse_c_key_env) <= _ENV_NAME_CHARS,
            f"encryption.sse_c_key_env must be a variable name (A-Z, 0-9, _), got {self.sse_c_key_env!r}",
        )

    @property
    def enabled(self) -> bool:
        """Whether objects are written (and must be read) encrypted."""
        return self.mode != "none"

    def for_kserve(self) -> EncryptionConfig:
        """The settings for model folders published to KServe's storage initializer and model agent.

        They download without SSE-C keys, so an ``sse-c`` client's serving copies are written with ``sse-s3``
        (still encrypted at rest; ``sse-kms`` and ``sse-s3`` stay as they are).
        """
        return EncryptionConfig(mode="sse-s3") if self.mode == "sse-c" else self


def sse_c_key(config: EncryptionConfig, environ: Mapping[str, str] | None = None) -> bytes:
    """The client's SSE-C key from ``encryption.sse_c_key_env``.

    Raises:
        ConfigError: Naming the setting: the variable is not set, not base64, or not 32 bytes.
    """
    env = os.environ if environ is None else environ
    name = config.sse_c_key_env
    raw = env.get(name, "").strip()
    if not raw:
        raise ConfigError(
            f"encryption.sse_c_key_env: variable {name} is not set; sse-c needs the client's 256-bit key "
            "(base64) from its Secret"
        )
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"encryption.sse_c_key_env: variable {name} is not valid base64") from None
    if len(key) != 32:
        raise ConfigError(f"encryption.sse_c_key_env: variable {name} holds {len(key)} bytes; SSE-C needs 32")
    return key


def write_sse(config: EncryptionConfig, environ: Mapping[str, str] | None = None) -> Any:
    """The ``minio.sse`` object a write sends (``None`` for ``none``)."""
    if config.mode == "none":
        return None
    from minio.sse import SseCustomerKey, SseKMS, SseS3

    if config.mode == "sse-s3":
        return SseS3()
    if config.mode == "sse-kms":
        return SseKMS(config.kms_key_id, None)
    return SseCustomerKey(sse_c_key(config, environ))


def read_ssec(config: EncryptionConfig, environ: Mapping[str, str] | None = None) -> Any:
    """The SSE-C key a read sends (``None`` unless the mode is ``sse-c``)."""
    if config.mode != "sse-c":
        return None
    from minio.sse import SseCustomerKey

    return SseCustomerKey(sse_c_key(config, environ))


def bucket_default_rule(config: EncryptionConfig) -> tuple[str, str]:
    """The bucket default encryption onboarding sets: (algorithm, KMS key id).

    ``sse-kms`` -> (``aws:kms``, the key); ``sse-s3`` and ``sse-c`` -> (``AES256``, ""): a bucket default cannot
    hold a customer key, so an SSE-C client's buckets encrypt what other writers put there with SSE-S3.
    """
    if config.mode == "sse-kms":
        return "aws:kms", config.kms_key_id
    return "AES256", ""
