"""The model server's typed refusals, each with its HTTP status and gRPC code (standard library only).

Bad input stays kserve's ``InvalidInput`` (HTTP 400 / INVALID_ARGUMENT, raised by the predictors' ``preprocess``);
these are the other answers a request can get. Their messages are short and never carry a server path or the
request's payload. REST answers ``{"error": message, ...extra}`` (the shape of the Open Inference Protocol's error
objects); gRPC aborts with the code and the message.
"""

from __future__ import annotations

from typing import Any


class ServingError(Exception):
    """A refusal with its HTTP status, gRPC status code name and extra fields of the REST body.

    Args:
        message: What went wrong, for the caller.
        extra: More fields of the REST error body (the lip-sync evidence, a reason code).
        headers: HTTP headers of the REST answer (``Retry-After``).
    """

    http_status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


class PayloadTooLarge(ServingError):
    """A body, upload, video or image beyond the configured limits."""

    http_status = 413
    grpc_code = "INVALID_ARGUMENT"


class Unauthenticated(ServingError):
    """No token, or a token the server does not know."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class Forbidden(ServingError):
    """A valid token asking for another client's model, or a client token on an admin route."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class NotFound(ServingError):
    """A version of a model the server does not serve."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class Overloaded(ServingError):
    """The model's queue is full: try again shortly."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class NotReady(ServingError):
    """The model is loading or stopping."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class RequestTimeout(ServingError):
    """The request took longer than ``serving.request_timeout_s``."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class NoEvidence(ServingError):
    """A lip-sync video that carries no evidence for a verdict (its reason codes and evidence in ``extra``)."""

    http_status = 422
    grpc_code = "FAILED_PRECONDITION"
