"""Bounds found in review of the worker/connection side of issue 9 (pure rules, no network).

Flags are stored on the message item like its metadata, so they are bounded in count and bytes
with the system flags kept; interactive calls finish inside API Gateway's 29 s.
"""

from __future__ import annotations

import time

from mailsync import flags as flag_rules
from mailsync.config import Settings
from mailsync.domain import Address
from mailsync.mailbox.connection import _flags
from mailsync.mailbox.transport import Budget
from mailsync.sync import metadata

# API Gateway cuts an HTTP API integration at 29 s (the API function's own Timeout is 29 s too).
API_GATEWAY_SECONDS = 29.0
KEYWORDS = tuple(f"$kw{i:05d}-{'k' * 20}" for i in range(20_000))


def total_bytes(flags: tuple[str, ...] | list[str]) -> int:
    return sum(len(f.encode()) for f in flags)


def test_twenty_thousand_keywords_are_cut_to_a_bounded_set_keeping_seen() -> None:
    # As the IMAP parser hands them over: bytes, \Seen last, the other system flags among them.
    parsed = (*(k.encode() for k in KEYWORDS), b"\\Answered", b"\\Flagged", b"\\Recent", b"\\Seen")
    flags = _flags(parsed)
    assert len(flags) <= flag_rules.MAX_FLAGS
    assert total_bytes(flags) <= flag_rules.MAX_FLAGS * flag_rules.FLAG_BYTES
    assert {"\\Seen", "\\Answered", "\\Flagged"} <= set(flags)
    assert "\\Recent" not in flags
    assert list(flags) == sorted(flags, key=str.lower)
    # The same server answer gives the same flags every time: no flip-flopping between syncs.
    assert _flags(tuple(reversed(parsed))) == flags


def test_an_over_long_keyword_is_dropped_not_cut() -> None:
    long = "x" * (flag_rules.FLAG_BYTES + 1)
    assert flag_rules.cap_flags(["\\Seen", long, "$Label1"]) == ("$Label1", "\\Seen")


def test_few_flags_stay_as_they_are() -> None:
    assert _flags((b"\\Seen", b"$Forwarded", b"NonJunk")) == ("$Forwarded", "\\Seen", "NonJunk")


def test_minimal_metadata_bounds_the_flags_too() -> None:
    fields = metadata.minimal_fields(
        "s", [Address(email="a@example.com")], "<id@x>", "note", flags=[*KEYWORDS, "\\Seen"]
    )
    assert len(fields["flags"]) <= flag_rules.MAX_FLAGS and "\\Seen" in fields["flags"]
    assert fields["seen"] is True
    unseen = metadata.minimal_fields("s", [], None, "note", flags=KEYWORDS)
    assert unseen["seen"] is False and len(unseen["flags"]) == flag_rules.MAX_FLAGS


def test_an_interactive_check_ends_before_api_gateway_gives_up() -> None:
    # Left time for the API function to answer with a clear error, not a gateway 504. Measured
    # from after each budget is made, so time the machine loses meanwhile cannot count against it.
    budget = Budget.from_settings(Settings(), None)
    assert budget.deadline - time.monotonic() <= API_GATEWAY_SECONDS - 5
    before = time.monotonic()
    small = Budget.from_settings(Settings(job_budget_seconds=8), None)
    assert before + 8 - 0.5 <= small.deadline <= time.monotonic() + 8.5
