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


RAW_UNAVAILABLE = (
    "The original of this message cannot be read: its stored copy is missing or damaged. "
    "The message itself is unaffected."
)


class RawUnavailable(MailsyncError):
    """The message is there but its stored raw copy is not (or is damaged): a storage fault,
    not the caller's, said as such rather than as an unexplained internal error."""

    code = "raw_unavailable"
    status = 500


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
    """Reaching or logging in to the user's mail server failed.

    Each subclass says what the caller must do:

    * ``AuthFailed``: the credentials are wrong; ask the user, do not retry.
    * ``ConnectFailed``, ``MailTimeout``, ``ServerBusy``, ``TlsFailed``: transient or
      environmental; retry later with backoff.
    * ``FolderMissing``: the folder is gone; skip it (or fail the one operation on it).
    * ``OperationRefused``: the server said NO/BAD to one change; fail that operation only.
    * ``ServerMisbehaving``, ``ProtocolMismatch``: the server broke the protocol or a budget,
      or something else answers on the port; back off for this account.
    * ``ExtensionMissing``: the server lacks what a call needs; use the fallback instead.
    """

    status = 502


class AuthFailed(MailboxError):
    code = "auth_failed"

    def __init__(self, message: str = "Login to mailbox failed: check user name and password", **kw) -> None:
        super().__init__(message, **kw)


class ReauthRequired(AuthFailed):
    """The provider no longer honours the mailbox's OAuth2 grant: only a new consent helps."""

    code = "reauth_required"

    def __init__(
        self,
        message: str = "The mail provider no longer allows access to this mailbox: connect it again",
        **kw,
    ) -> None:
        super().__init__(message, **kw)


class AccessTokenRejected(MailboxError):
    """The mail server said NO to an OAuth2 access token that had not expired: the next job
    gets a new one (and learns from the provider whether the grant still stands)."""

    code = "token_rejected"

    def __init__(self, message: str = "The mail server refused the access token; it will be renewed", **kw) -> None:
        super().__init__(message, **kw)


class ConnectFailed(MailboxError):
    code = "connect_failed"


class TlsFailed(MailboxError):
    code = "tls_failed"


class MailTimeout(MailboxError):
    code = "timeout"
    status = 504


class ServerBusy(MailboxError):
    """The server turned us away for now (BYE at greeting or login, ``[UNAVAILABLE]``, throttling,
    a reset or a timeout during login): transient, retried with backoff, never ``auth_failed``."""

    code = "server_busy"
    status = 503


class ProtocolMismatch(MailboxError):
    """Something other than the configured protocol answers on the port (SMTP, HTTP, POP3 on an
    IMAP setting, ...)."""

    code = "protocol_mismatch"


class ServerMisbehaving(MailboxError):
    """The server broke a budget (line or literal too long, endless untagged responses, too many
    folders, a whole job's wall time) or sent something unparseable: backoff for this account."""

    code = "server_misbehaving"


class OperationRefused(MailboxError):
    """The server answered NO/BAD to one command on one message or folder (over quota, read-only
    mailbox, folder deleted). Fails that operation only, never the account."""

    code = "server_refused"


class FolderMissing(OperationRefused):
    """A folder we work on does not exist on the server (any more): skip that folder or fail the
    operation on it, never the account."""

    code = "folder_missing"

    def __init__(self, folder: str) -> None:
        super().__init__(f"The folder {folder!r} does not exist on the mail server (deleted or renamed?)")
        self.folder = folder


class ExtensionMissing(ConnectFailed):
    """The server lacks an IMAP extension this call needs; the caller should use its fallback."""
