"""POP3 adapter: login check (POP has no folders; its single mailbox is INBOX)."""

from __future__ import annotations

import poplib

from mailsync.config import Settings
from mailsync.errors import AuthFailed, ConnectFailed, TlsFailed
from mailsync.mailbox.base import ConnectionCheck, ServerParams, client_ssl_context, precheck, translate_errors


def check_pop3(params: ServerParams, settings: Settings) -> ConnectionCheck:
    precheck(params, settings)
    ctx = client_ssl_context(settings)
    with translate_errors(params):
        if params.security == "ssl":
            conn: poplib.POP3 = poplib.POP3_SSL(
                params.host, params.port, timeout=settings.imap_timeout_seconds, context=ctx
            )
        else:
            conn = poplib.POP3(params.host, params.port, timeout=settings.imap_timeout_seconds)
        try:
            if params.security == "starttls":
                try:
                    conn.stls(context=ctx)
                except poplib.error_proto as exc:
                    raise TlsFailed(f"The mail server refused STLS: {exc}") from None
            try:
                conn.user(params.username)
                conn.pass_(params.password)
            except poplib.error_proto:
                raise AuthFailed() from None
            try:
                caps = sorted(conn.capa())
            except poplib.error_proto:
                caps = []
            try:
                conn.quit()
            except (poplib.error_proto, OSError) as exc:
                raise ConnectFailed(f"POP3 session ended with an error: {exc}") from None
        finally:
            conn.close()
    return ConnectionCheck(protocol="pop3", capabilities=caps)
