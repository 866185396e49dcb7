"""One exception tree for trainfarm; the master maps it to HTTP answers in one handler."""

from __future__ import annotations


class TrainfarmError(Exception):
    """Root of every error trainfarm raises on purpose."""

    http_status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Dotted path of the request field at fault, when one is.
        self.field = field

    def headers(self) -> dict[str, str] | None:
        """HTTP headers the answer to this error carries."""
        return None


class NotFound(TrainfarmError):
    http_status = 404


class Unauthorized(TrainfarmError):
    """No credentials, or ones that do not work (unknown, expired, revoked, a disabled user)."""

    http_status = 401

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(TrainfarmError):
    """Credentials that work, for a user whose role or ownership does not allow this."""

    http_status = 403


class RateLimited(TrainfarmError):
    """Over a rate limit; `retry_after` seconds from now a request is allowed again."""

    http_status = 429

    def __init__(self, message: str, retry_after: int, *, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)}


class InvalidRequest(TrainfarmError):
    http_status = 422


class Conflict(TrainfarmError):
    http_status = 409


class RetryableError(TrainfarmError):
    """A failure that another attempt may not have: a lost worker, storage or Redis unreachable."""

    http_status = 503


class StorageUnavailable(RetryableError):
    """S3 unreachable or failing for now (refused, reset, timed out, a 5xx); a missing object is
    `NotFound` instead. The master answers 503 with Retry-After; workers retry."""


class TooManyConnections(RetryableError):
    """Over a per-client cap on open connections (live-log streams): a later try works once one of
    them has closed, so it answers 429 with Retry-After."""

    http_status = 429


class FinalError(TrainfarmError):
    """A failure that would repeat on every attempt: bad spec, missing dataset, user code error."""

    http_status = 422


class DatasetMissing(FinalError):
    pass


class TrainingFailed(FinalError):
    pass
