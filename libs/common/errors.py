"""One error hierarchy for HTTP answers and broker decisions.

Every error the platform raises on purpose derives from :class:`DriftloopError`.
It carries an HTTP status and renders itself as JSON, so an API never answers a
stack trace; and it says whether retrying could help, so a Kafka consumer knows
whether to back off and try again or to dead-letter the message at once.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar


class DriftloopError(Exception):
    """Base error: an HTTP status, a machine-readable code and a human message."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    #: Whether the same input could succeed later (a database that is down) or
    #: never will (a malformed event). Consumers retry only retryable errors.
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the body (``Retry-After`` on a 503)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """The JSON body an HTTP API answers with."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(DriftloopError):
    status_code = 400
    code = "bad_request"


class Unauthorized(DriftloopError):
    """No valid bearer token: unknown, expired, revoked or missing."""

    status_code = 401
    code = "unauthorized"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="driftloop"'}


class Forbidden(DriftloopError):
    """A valid token whose principal lacks the role the route needs."""

    status_code = 403
    code = "forbidden"


class NotFound(DriftloopError):
    status_code = 404
    code = "not_found"


class Conflict(DriftloopError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(DriftloopError):
    status_code = 413
    code = "payload_too_large"


class ValidationFailed(DriftloopError):
    status_code = 422
    code = "validation_failed"


class TooManyRequests(DriftloopError):
    """The caller's rate limit is used up; ``Retry-After`` says when to come back."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, **details: Any) -> None:
        super().__init__(message, retry_after_s=round(retry_after_s, 3), **details)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class InvalidEvent(DriftloopError):
    """A Kafka message that is not a valid driftloop event; never retried."""

    status_code = 422
    code = "invalid_event"


class TransientError(DriftloopError):
    """A failure that may pass: a dependency is down or overloaded."""

    status_code = 503
    code = "unavailable"
    retryable = True
    #: Seconds a client should wait before retrying (the ``Retry-After`` header).
    retry_after_s: ClassVar[int] = 5

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class DatabaseUnavailable(TransientError):
    """PostgreSQL cannot be reached or is restarting: retry later, nothing was stored."""

    code = "database_unavailable"


class MigrationError(DriftloopError):
    code = "migration_error"


class ArtifactError(DriftloopError):
    code = "artifact_error"


class ArtifactNotFound(ArtifactError, NotFound):
    status_code = 404
    code = "artifact_not_found"


class ArtifactCorrupted(ArtifactError):
    """The bytes read do not hash to the digest the artifact was stored under."""

    status_code = 500
    code = "artifact_corrupted"
