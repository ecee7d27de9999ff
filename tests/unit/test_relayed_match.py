"""A server copy found by the Message-ID of a relayed message takes its place only if it is that message."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mailsync.sync.planner.messages import RELAYED_DATE_TOLERANCE, Envelope, same_relayed_message

RELAYED = Envelope(sender="anna@example.com", subject="Offer  for Jan", date=datetime(2026, 12, 1, 9, tzinfo=UTC))


def test_the_same_message_from_the_server_is_the_relayed_one() -> None:
    server = replace(RELAYED, subject=" Offer for\tJan", date=RELAYED.date + RELAYED_DATE_TOLERANCE)
    assert same_relayed_message(RELAYED, server)
    undated = replace(RELAYED, date=None)
    assert same_relayed_message(undated, undated)


@pytest.mark.parametrize(
    "server",
    [
        replace(RELAYED, sender="mallory@example.com"),
        replace(RELAYED, sender=None),
        replace(RELAYED, subject="Offer for Jan (revised)"),
        replace(RELAYED, date=RELAYED.date + RELAYED_DATE_TOLERANCE + timedelta(seconds=1)),
        replace(RELAYED, date=RELAYED.date - timedelta(days=1)),
        replace(RELAYED, date=None),
    ],
)
def test_a_different_message_with_the_relayed_message_id_is_a_message_of_its_own(server: Envelope) -> None:
    assert not same_relayed_message(RELAYED, server)
