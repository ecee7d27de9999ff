"""Memory of a large fetch: the message's bytes, not copies of them made for a log nobody reads.

imapclient raises imaplib's debug level to 5, at which imaplib formats every stored response,
literals included, into a log string; the connection keeps that level at 0.
"""

from __future__ import annotations

import tracemalloc

from devstack.dovecot import MailUser, make_message
from tests.integration.imap_support import _session

MESSAGE_BYTES = 8 * 1024 * 1024


def test_fetching_a_large_message_holds_about_its_own_size(mail_user: MailUser) -> None:
    body = "".join(f"{i:07d} line of a large message, enough to matter\n" for i in range(MESSAGE_BYTES // 52))
    raw = make_message(subject="large", body=body)
    with mail_user.client() as imap:
        uid = imap.append("INBOX", raw)
    with _session(mail_user) as conn:
        conn.examine("INBOX")
        tracemalloc.start()
        try:
            [fetched] = conn.fetch([uid])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert fetched.raw.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
    # The literal as read plus the parsed copy handed out: about twice the message. A debug
    # string of it (repr of the bytes) alone would add as much again, and more for escapes.
    assert peak < 2.6 * len(raw), f"peak {peak / 2**20:.1f} MiB for a {len(raw) / 2**20:.1f} MiB message"
