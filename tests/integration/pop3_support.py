"""Helpers for the POP3 sync tests: a POP3 account saved through the API on the harness's Dovecot,
mail delivered into its maildrop, the maildrop as another POP3 client sees it, and the sync's
clock."""

from __future__ import annotations

import email
import email.policy
from datetime import datetime, timedelta
from typing import Any

import pytest

from devstack.dovecot import MailUser, make_message
from tests.conftest import ApiCall, Caller
from tests.integration.sync_support import Account, days_ago

SETTINGS = "/v1/users/me/mail-settings"


class PopAccount(Account):
    """An ``Account`` whose settings say POP3 (TLS on the pop3s port)."""

    extra: dict[str, Any]

    def settings_body(self) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.user.pop3s_port,
            "username": self.user.username,
            "password": self.user.password,
            "security": "ssl",
            "protocol": "pop3",
            **self.extra,
        }


def pop_account(api: ApiCall, user: MailUser, who: str = "alice", **settings: Any) -> PopAccount:
    account = PopAccount(api, user, Caller(who, "acme", "user"))
    account.extra = settings
    saved = api("PUT", SETTINGS, account.settings_body(), caller=account.caller)
    assert saved.status == 201, saved.body
    return account


def deliver(
    user: MailUser,
    subject: str,
    *,
    days: float = 1,
    dated: bool = True,
    received_days: float | None = None,
    message_id: Any = ...,
    body: str | None = None,
) -> bytes:
    """A message into the maildrop (INBOX, which is what POP3 serves), with a Date header ``days``
    old (or none) and optionally a Received line ``received_days`` old on top."""
    extra: dict[str, Any] = {} if message_id is ... else {"message_id": message_id}
    if body is not None:
        extra["body"] = body
    raw = make_message(subject=subject, date=days_ago(days), **extra)
    if not dated:
        raw = b"".join(line for line in raw.splitlines(keepends=True) if not line.startswith(b"Date: "))
    if received_days is not None:
        stamp = email.utils.format_datetime(days_ago(received_days))
        raw = f"Received: from mx.example.com by pop.example.net; {stamp}\r\n".encode() + raw
    with user.client() as imap:
        imap.append("INBOX", raw, internal_date=days_ago(received_days if received_days is not None else days))
    return raw


def maildrop(user: MailUser) -> dict[str, str]:
    """UIDL -> subject of every message on the server, as another POP3 client sees it."""
    conn = user.pop3()
    try:
        out = {}
        for line in conn.uidl()[1]:
            number, uidl = line.decode().split()
            head = b"\r\n".join(conn.top(int(number), 0)[1])
            out[uidl] = str(email.message_from_bytes(head, policy=email.policy.default)["Subject"])
        return out
    finally:
        conn.quit()


def on_server(user: MailUser) -> list[str]:
    return sorted(maildrop(user).values())


class Clock:
    """The POP3 sync's clock (``sync.pop.now``), moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: datetime) -> None:
        from mailsync.sync import pop

        self.now = start
        monkeypatch.setattr(pop, "now", lambda: self.now)

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
