"""Domain errors. Each carries the API error code, a human message and its HTTP status.

The API maps every ``MailsyncError`` to ``{"error": {"code", "message", "field"?}}`` in one place.
"""

from __future__ import annotations


class MailsyncError(Exception):
    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, str]:
        body = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class ValidationFailed(MailsyncError):
    code = "validation_error"
    status = 422


class NotFound(MailsyncError):
    code = "not_found"
    status = 404


class Forbidden(MailsyncError):
    code = "forbidden"
    status = 403


class Unauthorized(MailsyncError):
    code = "unauthorized"
    status = 401


class UnsupportedMediaType(MailsyncError):
    code = "unsupported_media_type"
    status = 415


class Conflict(MailsyncError):
    code = "conflict"
    status = 409


class MailboxError(MailsyncError):
    """Reaching or logging in to the user's mail server failed."""

    status = 502


class AuthFailed(MailboxError):
    code = "auth_failed"

    def __init__(self, message: str = "Login to mailbox failed: check user name and password", **kw) -> None:
        super().__init__(message, **kw)


class ConnectFailed(MailboxError):
    code = "connect_failed"


class TlsFailed(MailboxError):
    code = "tls_failed"


class MailTimeout(MailboxError):
    code = "timeout"
    status = 504
