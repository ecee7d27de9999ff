"""What the IMAP and POP3 adapters share: connection parameters and results, the TLS context,
the checks before connecting and socket-error translation. Imports neither adapter."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mailsync.config import Settings
from mailsync.errors import ConnectFailed, MailboxError, MailTimeout, TlsFailed
from mailsync.netguard import resolve_checked


@dataclass(frozen=True)
class ServerParams:
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    security: str  # ssl | starttls | none
    protocol: str = "imap"  # imap | pop3
    # OAuth2 mailboxes log in with this (XOAUTH2 / OAUTHBEARER) instead of ``password``.
    access_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ServerFolder:
    name: str
    delimiter: str | None
    flags: tuple[str, ...]
    special_use: str | None


@dataclass(frozen=True)
class ConnectionCheck:
    protocol: str
    capabilities: list[str]


SPECIAL_USE_FLAGS = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")


def client_ssl_context(settings: Settings) -> ssl.SSLContext:
    """A verifying context; the deployment may add one CA file (tests, private CAs).

    One per process and CA file: building it (loading the system's CA store) was about half the
    CPU of a no-op sync. An SSLContext is safe to share between connections and threads.
    """
    return _ssl_context(settings.extra_ca_file)


@functools.lru_cache(maxsize=8)
def _ssl_context(extra_ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if extra_ca_file:
        ctx.load_verify_locations(cafile=extra_ca_file)
    return ctx


def _describe_tls(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"The mail server's TLS certificate could not be verified: {exc.verify_message}"
    return f"TLS handshake with the mail server failed: {exc.reason or exc}"


@contextmanager
def translate_errors(params: ServerParams) -> Iterator[None]:
    """Map socket/TLS failures to the API's error codes; protocol errors are the adapter's job."""
    where = f"{params.host}:{params.port}"
    try:
        yield
    except MailboxError:
        raise
    except ssl.SSLError as exc:
        raise TlsFailed(_describe_tls(exc)) from None
    except TimeoutError:
        raise MailTimeout(f"The mail server {where} did not answer in time") from None
    except ConnectionRefusedError:
        raise ConnectFailed(f"Could not connect to {where}: connection refused") from None
    except OSError as exc:
        raise ConnectFailed(f"Could not connect to {where}: {exc.strerror or exc}") from None


def precheck(params: ServerParams, settings: Settings) -> list[str]:
    """Checks done before any byte is sent to the mail server.

    Returns the checked addresses: the adapters connect to these, so the host name is resolved
    exactly once (no second, unchecked DNS answer).
    """
    if params.security == "none" and not settings.allow_insecure:
        raise TlsFailed("Unencrypted connections are not allowed by this deployment")
    return resolve_checked(params.host, params.port, settings.allow_private_hosts)
