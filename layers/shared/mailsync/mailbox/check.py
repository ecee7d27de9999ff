"""The connection check: log in for real with either protocol and report what the server offers."""

from __future__ import annotations

from mailsync.config import Settings
from mailsync.mailbox.base import ConnectionCheck, ServerParams
from mailsync.mailbox.connection import open_imap
from mailsync.mailbox.pop import open_pop3


def open_mailbox_check(params: ServerParams, settings: Settings, *, deadline: float | None = None) -> ConnectionCheck:
    """Log in with ``params.protocol`` and report the capabilities; always log out.

    ``deadline`` is a ``time.monotonic()`` instant; without one an interactive budget applies.
    """
    if params.protocol == "pop3":
        with open_pop3(params, settings, deadline=deadline) as pop:
            return ConnectionCheck(protocol="pop3", capabilities=pop.capabilities())
    with open_imap(params, settings, deadline=deadline) as imap:
        return ConnectionCheck(protocol="imap", capabilities=imap.capabilities())
