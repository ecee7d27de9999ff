"""How a NO that imapclient raised is read back into the server's response code (no server)."""

from __future__ import annotations

import imaplib

import pytest
from imapclient.exceptions import IMAPClientError

from mailsync.errors import ConnectFailed, ExtensionMissing, FolderMissing, OperationRefused
from mailsync.mailbox.connection import _refusal_of


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        ("select failed: [NONEXISTENT] No such folder", ("NONEXISTENT", "[NONEXISTENT] No such folder")),
        ("append failed: [TRYCREATE] No such mailbox", ("TRYCREATE", "[TRYCREATE] No such mailbox")),
        ("store failed: [unavailable] try later", ("UNAVAILABLE", "[unavailable] try later")),
        ("status failed: Mailbox doesn't exist: Gone", (None, "Mailbox doesn't exist: Gone")),
    ],
)  # fmt: skip
def test_given_a_no_raised_by_imapclient_when_read_then_code_and_text(raised: str, expected: tuple) -> None:
    assert _refusal_of(IMAPClientError(raised)) == expected


def test_given_a_bad_raised_by_imaplib_when_read_then_not_a_refusal() -> None:
    # imaplib raises a tagged BAD itself, before imapclient looks at the answer.
    assert _refusal_of(imaplib.IMAP4.error("UID command error: BAD [b'Invalid uidset']")) is None


def test_given_the_error_classes_then_each_says_what_the_caller_does() -> None:
    gone = FolderMissing("Archive")
    assert gone.folder == "Archive" and "'Archive'" in gone.message
    assert isinstance(gone, OperationRefused) and not isinstance(gone, ConnectFailed)
    # The caller falls back to a full scan; unhandled, it is retried like a network failure.
    assert isinstance(ExtensionMissing("no CONDSTORE"), ConnectFailed)
