"""The relay's pure rules: how an address is drawn, how a relayed message is matched with its
IMAP copy, what is read of SES's event."""

from __future__ import annotations

import re

from mailsync import mime
from mailsync.services import relay
from mailsync.sync.planner.messages import match_key

RAW = b"From: jan@klant.test\r\nSubject: Hello\r\n\r\nBody\r\n"


def test_an_address_is_a_readable_slug_and_80_random_bits() -> None:
    drawn = {relay._draw("Jan.de.Vries@Klant.NL") for _ in range(50)}
    assert len(drawn) == 50  # never the same twice
    for local in drawn:
        assert re.fullmatch(r"jan-de-vries-klant-nl\.[a-z2-7]{16}", local), local
    assert re.fullmatch(r"[a-z2-7]{16}", relay._draw("+++"))  # nothing readable: random only
    assert len(relay._draw("x" * 128)) <= 64  # an RFC 5321 local part


def test_without_message_id_the_ses_trace_lines_do_not_count() -> None:
    ses_copy = b"Return-Path: <jan@klant.test>\r\nReceived: from a\r\n  by b\r\nX-SES-Spam-Verdict: PASS\r\n" + RAW
    key = relay.relay_match_key(ses_copy, mime.parse_message(ses_copy))
    assert key == match_key(None, mime.match_hash(RAW))
    # Only the block in front: the sender's own Received lines further down are the message's.
    later = b"Subject: x\r\nReceived: from a\r\n\r\nBody"
    assert relay.relay_match_key(later, mime.parse_message(later)) == match_key(None, mime.match_hash(later))


def test_with_message_id_the_key_is_the_message_id() -> None:
    raw = b"Message-ID: <a@b>\r\n" + RAW
    assert relay.relay_match_key(raw, mime.parse_message(raw)) == "mid:a@b"


def test_the_notice_keeps_ses_verdicts_and_refuses_odd_message_ids() -> None:
    record = {
        "ses": {
            "mail": {"messageId": "abc123", "timestamp": "2026-12-01T10:00:00Z"},
            "receipt": {"recipients": ["a@x"], "virusVerdict": {"status": "FAIL"}, "spamVerdict": {"status": "GRAY"}},
        }
    }
    notice = relay.parse_notice(record)
    assert notice is not None
    verdicts = notice.verdicts()
    assert (verdicts.virus, verdicts.spam, verdicts.spf) == ("FAIL", "GRAY", None)
    record["ses"]["mail"]["messageId"] = "../other-prefix/key"
    assert relay.parse_notice(record) is None
    assert relay.parse_notice("not a record") is None


def test_a_relayed_message_id_is_stable_per_delivery_and_user() -> None:
    one = relay.message_id_for("acme", "alice", "ses-1")
    assert one == relay.message_id_for("acme", "alice", "ses-1")
    assert one != relay.message_id_for("acme", "bob", "ses-1") != relay.message_id_for("acme", "alice", "ses-2")
