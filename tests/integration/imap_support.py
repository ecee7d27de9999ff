"""Shared by the IMAP adapter tests: both Dovecot flavours, a logged-in session, command counts."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

import pytest

from devstack.dovecot import MailUser
from mailsync.config import Settings
from mailsync.mailbox.base import ServerParams
from mailsync.mailbox.connection import ImapConnection, open_imap

BOTH = pytest.mark.parametrize("flavour", ["full", "basic"])


def _user(request: pytest.FixtureRequest, flavour: str) -> MailUser:
    return request.getfixturevalue("mail_user" if flavour == "full" else "mail_user_basic")


@contextmanager
def _session(user: MailUser, *, ignore_capabilities: Collection[str] = ()) -> Iterator[ImapConnection]:
    params = ServerParams(
        host=user.host, port=user.imaps_port, username=user.username, password=user.password, security="ssl"
    )
    settings = Settings(allow_private_hosts=True, extra_ca_file=str(user.ca_file))
    with open_imap(params, settings, ignore_capabilities=ignore_capabilities) as session:
        yield session


@contextmanager
def _counted(session: ImapConnection, expected: int) -> Iterator[None]:
    before = session.command_count
    yield
    assert session.command_count - before == expected
