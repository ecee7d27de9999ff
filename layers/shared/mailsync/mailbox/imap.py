"""IMAP adapter on imapclient: connect, login, capabilities, folder list."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError
from imapclient.util import to_unicode

from mailsync.config import Settings
from mailsync.errors import AuthFailed, ConnectFailed, TlsFailed
from mailsync.mailbox.base import (
    SPECIAL_USE_FLAGS,
    ServerFolder,
    ServerParams,
    client_ssl_context,
    precheck,
    translate_errors,
)
from mailsync.observability import logger

_SPECIAL_USE = {flag.lower(): flag for flag in SPECIAL_USE_FLAGS}


class CommandCounter:
    """Counts the commands an imaplib connection sends: sync cost is measured in commands.

    Every command, whichever imaplib path sends it (``_command`` or imapclient's raw path),
    takes exactly one new tag, so counting tags counts commands.
    """

    def __init__(self, client: IMAPClient) -> None:
        self.count = 0
        imap = client._imap
        original = imap._new_tag

        def counted() -> bytes:
            self.count += 1
            return original()

        imap._new_tag = counted


class ImapSession:
    """A logged-in IMAP connection. Protocol only: callers decide what to store."""

    def __init__(self, client: IMAPClient, params: ServerParams, counter: CommandCounter | None = None) -> None:
        self._client = client
        self._params = params
        self._counter = counter or CommandCounter(client)

    @property
    def client(self) -> IMAPClient:
        return self._client

    @property
    def params(self) -> ServerParams:
        return self._params

    @property
    def command_count(self) -> int:
        """IMAP commands sent on this connection so far (LOGIN and CAPABILITY included)."""
        return self._counter.count

    def capabilities(self) -> list[str]:
        with translate_errors(self._params):
            return sorted(to_unicode(c) for c in self._client.capabilities())

    def has_capability(self, name: str) -> bool:
        with translate_errors(self._params):
            return self._client.has_capability(name)

    def list_folders(self) -> list[ServerFolder]:
        with translate_errors(self._params):
            try:
                raw = self._list_raw()
            except IMAPClientError as exc:
                raise ConnectFailed(f"The mail server refused to list folders: {exc}") from None
        folders = []
        for flags, delimiter, name in raw:
            text_flags = tuple(to_unicode(f) for f in flags)
            special = next((_SPECIAL_USE[f.lower()] for f in text_flags if f.lower() in _SPECIAL_USE), None)
            folders.append(
                ServerFolder(
                    name=to_unicode(name),
                    delimiter=to_unicode(delimiter) if delimiter else None,
                    flags=text_flags,
                    special_use=special,
                )
            )
        return folders

    def _list_raw(self) -> list[tuple]:
        # Dovecot and others send SPECIAL-USE flags only when asked (RFC 6154 LIST-EXTENDED
        # RETURN option); imapclient has no call for it, so build that one command ourselves.
        if not self._client.has_capability("SPECIAL-USE"):
            return self._client.list_folders()
        imap = self._client._imap
        typ, data = imap._simple_command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
        if typ != "OK":
            return self._client.list_folders()
        typ, data = imap._untagged_response(typ, data, "LIST")
        return self._client._proc_folder_list(data)


def _connect(params: ServerParams, settings: Settings) -> IMAPClient:
    ctx = client_ssl_context(settings)
    client = IMAPClient(
        params.host,
        port=params.port,
        ssl=params.security == "ssl",
        ssl_context=ctx,
        timeout=settings.imap_timeout_seconds,
    )
    client.mailsync_counter = CommandCounter(client)
    if params.security == "starttls":
        if not client.has_capability("STARTTLS"):
            client.shutdown()
            raise TlsFailed("The mail server does not offer STARTTLS on this port")
        try:
            client.starttls(ctx)
        except IMAPClientError as exc:
            client.shutdown()
            raise TlsFailed(f"STARTTLS failed: {exc}") from None
    return client


@contextmanager
def open_imap(params: ServerParams, settings: Settings) -> Iterator[ImapSession]:
    """Connect, upgrade to TLS as configured, log in; always log out."""
    precheck(params, settings)
    with translate_errors(params):
        client = _connect(params, settings)
        try:
            client.login(params.username, params.password)
        except LoginError:
            client.shutdown()
            logger.info("IMAP login rejected", extra={"mail_host": params.host})
            raise AuthFailed() from None
        # Read the post-login capabilities while the LOGIN response still carries them; after
        # the first SELECT imapclient would need a CAPABILITY command of its own.
        client.capabilities()
    try:
        yield ImapSession(client, params, getattr(client, "mailsync_counter", None))
    finally:
        try:
            client.logout()
        except Exception:  # noqa: BLE001 - the work is done; a failing LOGOUT must not mask it
            client.shutdown()
