"""Poison mail never stops a sync (finding 2), and mail over the size cap is stored as headers.

Through the real path: the messages are APPENDed to Dovecot next to ordinary mail, a sync job
runs as the worker runs it, and moto's DynamoDB enforces the 400 KB item and key size limits.
"""

from __future__ import annotations

import email.utils
from typing import Any

import pytest
import requests

from tests.integration.sync_support import Account, connect_account, days_ago, message


@pytest.fixture
def account(api, local_mail_env, mail_user) -> Account:
    return connect_account(api, mail_user)


def raw_message(message_id: str, headers: list[str], body: str = "Body text.") -> bytes:
    """A message built by hand: a library would refold or refuse these headers."""
    lines = [
        "From: Sender <sender@example.com>",
        "To: Recipient <recipient@example.com>",
        f"Date: {email.utils.format_datetime(days_ago(1))}",
        f"Message-ID: <{message_id}>",
        *headers,
    ]
    if not any(h.startswith("Subject:") for h in headers):
        lines.append(f"Subject: {message_id}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode("utf-8")


POISON = {
    "references@poison": ["References: " + " ".join(f"<{i}.{'r' * 4500}@example.com>" for i in range(100))],
    "subject@poison": ["Subject: " + "S" * 1_000_000],
    "recipients@poison": ["Cc: " + ", ".join(f"person{i}.{'p' * 20}@example.com" for i in range(10_000))],
    "address@poison": ["Reply-To: <" + "a" * 5000 + "@example.com>", "Cc: <" + "c" * 5000 + "@example.com>"],
}


def stored(account: Account) -> dict[str, dict[str, Any]]:
    """Synced messages by Message-ID, with the stored item's markers."""
    from mailsync import dal

    out = {}
    for m in account.messages():
        item = dal.find_message(m["id"])
        assert item is not None
        out[m["internet_message_id"]] = {
            **m,
            "truncated": bool(item.metadata_truncated),
            "too_large": bool(item.too_large),
        }
    return out


def status_of(account: Account) -> dict[str, Any]:
    return account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body


def test_poison_mail_is_stored_truncated_and_the_sync_goes_on(account: Account) -> None:
    with account.user.client() as imap:
        imap.append("INBOX", raw_message("before@ok", []), internal_date=days_ago(1))
        for message_id, headers in POISON.items():
            imap.append("INBOX", raw_message(message_id, headers), internal_date=days_ago(1))
        imap.append("INBOX", raw_message("after@ok", []), internal_date=days_ago(1))
        imap.append("Sent", raw_message("sent@ok", []), flags=["\\Seen"], internal_date=days_ago(1))

    result = account.sync()
    assert result.status == "synced", result

    messages = stored(account)
    assert set(messages) == {"before@ok", "after@ok", "sent@ok", *POISON}
    assert all(messages[m]["truncated"] for m in POISON)
    assert not any(messages[m]["truncated"] for m in ("before@ok", "after@ok", "sent@ok"))
    assert 0 < len(messages["references@poison"]["references"]) < 100
    assert len(messages["subject@poison"]["subject"].encode()) <= 2000
    status = status_of(account)
    assert (status["state"], status["last_error"]) == ("idle", None)

    # New mail after it still arrives.
    with account.user.client() as imap:
        imap.append("INBOX", message("later", days=0.1), internal_date=days_ago(0.1))
    assert account.sync().status == "synced"
    assert "later" in account.synced()
    assert status_of(account)["state"] == "idle"


def test_a_message_whose_metadata_cannot_be_stored_is_kept_with_minimal_metadata(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Metadata bounds that are too generous (a future field, a mistake) must not wedge the
    # account either: DynamoDB's refusal of the item keeps the message with minimal metadata.
    from mailsync.sync import metadata

    monkeypatch.setitem(metadata.LIST_BYTES, "references", 10**9)
    monkeypatch.setattr(metadata, "MAX_LIST", 10**6)
    monkeypatch.setattr(metadata, "ID_BYTES", 10**6)
    poison_raw = raw_message("references@poison", POISON["references@poison"])
    with account.user.client() as imap:
        imap.append("INBOX", raw_message("before@ok", []), internal_date=days_ago(1))
        imap.append("INBOX", poison_raw, internal_date=days_ago(1))
        imap.append("INBOX", raw_message("after@ok", []), internal_date=days_ago(1))

    assert account.sync().status == "synced"
    messages = stored(account)
    assert set(messages) == {"before@ok", "references@poison", "after@ok"}
    poison = messages["references@poison"]
    assert poison["truncated"] and poison["references"] == [] and poison["subject"] == "references@poison"
    assert [a["email"] for a in poison["from"]] == ["sender@example.com"]
    assert messages["after@ok"]["references"] == [] and not messages["after@ok"]["truncated"]
    # The raw message stays whole.
    link = account.api("GET", f"/v1/messages/{poison['id']}/raw", caller=account.caller).body
    assert requests.get(link["url"], timeout=10).content == poison_raw
    assert status_of(account)["state"] == "idle"


class CountingReader:
    """The real reader, counting the message bytes it brings into memory."""

    def __init__(self, session: Any) -> None:
        self._reader = session
        self.largest = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def fetch(self, uids: Any) -> Any:
        got = self._reader.fetch(uids)
        self.largest = max([self.largest, *(len(m.raw) for m in got)])
        return got

    def fetch_headers(self, uids: Any, max_bytes: int) -> Any:
        got = self._reader.fetch_headers(uids, max_bytes)
        self.largest = max([self.largest, *(len(m.raw) for m in got)])
        return got


def test_a_message_over_the_size_cap_is_stored_as_its_headers(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_MAX_MESSAGE_BYTES", "100000")
    get_settings.cache_clear()
    big = raw_message("big@ok", ["Subject: the big one"], body="x" * 76 + "\r\n" * 0 + ("y" * 998 + "\r\n") * 300)
    small = raw_message("small@ok", [])
    with account.user.client() as imap:
        imap.append("INBOX", big, internal_date=days_ago(1))
        imap.append("INBOX", small, internal_date=days_ago(1))
    readers: list[CountingReader] = []

    def factory(session: Any) -> CountingReader:
        readers.append(CountingReader(session))
        return readers[-1]

    assert account.sync(connection_factory=factory).status == "synced"

    messages = stored(account)
    assert set(messages) == {"big@ok", "small@ok"}
    assert messages["big@ok"]["too_large"] and not messages["small@ok"]["too_large"]
    assert messages["big@ok"]["size"] == len(big) and messages["big@ok"]["subject"] == "the big one"
    # Its body never came over the wire: the largest thing fetched is the small message.
    assert max(r.largest for r in readers) < 100_000
    header = big[: big.index(b"\r\n\r\n") + 4]
    link = account.api("GET", f"/v1/messages/{messages['big@ok']['id']}/raw", caller=account.caller).body
    assert requests.get(link["url"], timeout=10).content == header
    assert status_of(account)["state"] == "idle"
