"""How folder names go to and come from the server: modified UTF-7, or raw as a server sent them."""

from __future__ import annotations

import pytest

from mailsync.mailbox.imap import folder_name, mailbox_arg, sent_raw


@pytest.mark.parametrize(
    ("wire", "raw", "name"),
    [
        (b"R&-D", False, "R&D"),
        (b"&Jjo-", False, "\u263a"),
        (b"INBOX.Sent", False, "INBOX.Sent"),
        (b"R&D", True, "R&D"),
        (b"A&B-C", True, "A&B-C"),
        ("caf\u00e9".encode(), True, "caf\u00e9"),
    ],
)
def test_a_name_from_the_server_is_decoded_or_kept_as_sent(wire: bytes, raw: bool, name: str) -> None:
    assert (sent_raw(wire), folder_name(wire)) == (raw, name)


def test_a_name_goes_back_in_modified_utf7_unless_the_server_sent_it_raw() -> None:
    assert mailbox_arg("R&D") == '"R&-D"'
    assert mailbox_arg("R&D", raw=True) == '"R&D"'
    assert mailbox_arg('a "b" \\ c') == '"a \\"b\\" \\\\ c"'
    # imaplib sends ASCII only: a raw non-ASCII name can only go as modified UTF-7.
    assert mailbox_arg("caf\u00e9", raw=True) == '"caf&AOk-"'


@pytest.mark.parametrize("wire", [b"R&-D", b"&Jjo-", b"R&D", b"A&B-C", b"Work/Q&A"])
def test_every_ascii_name_round_trips_byte_for_byte(wire: bytes) -> None:
    name = folder_name(wire)
    assert mailbox_arg(name, raw=sent_raw(wire)) == '"' + wire.decode() + '"'
