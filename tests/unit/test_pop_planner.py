"""POP3 sync decisions (``sync.planner.pop``): what to fetch, delete and forget, one rule per test."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from mailsync.domain import PopSeen
from mailsync.sync.planner import pop
from mailsync.sync.planner.pop import Listed

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def listed(*uidls: str, size: int = 100) -> list[Listed]:
    return [Listed(number=i + 1, uidl=u, size=size) for i, u in enumerate(uidls)]


def stored(uidl: str, *, days_ago: float = 0, size: int | None = 100) -> PopSeen:
    at = NOW - timedelta(days=days_ago)
    return PopSeen(uidl=uidl, seen_at=at, size=size, id=f"id-{uidl}", stored_at=at)


def too_old(uidl: str) -> PopSeen:
    return PopSeen(uidl=uidl, seen_at=NOW, size=100)


def plan(server: list[Listed], known: list[PopSeen], **kw: object) -> pop.PopPlan:
    options = {"now": NOW, "keep_copy": True, "remove_after_days": None} | kw
    return pop.plan(server, {s.uidl: s for s in known}, **options)  # type: ignore[arg-type]


def uidls(messages: list[Listed]) -> list[str]:
    return [m.uidl for m in messages]


def test_unknown_uidls_are_fetched_oldest_first_and_known_ones_are_not() -> None:
    step = plan(listed("a", "b", "c"), [stored("b")])
    assert uidls(step.fetch) == ["a", "c"]
    assert step.delete == [] and step.forget == [] and step.has_work


def test_a_maildrop_that_matches_the_state_is_no_work() -> None:
    step = plan(listed("a", "b"), [stored("a"), too_old("b")])
    assert not step.has_work


def test_uidls_the_server_no_longer_lists_are_forgotten_not_an_error() -> None:
    step = plan(listed("a"), [stored("a"), stored("gone"), too_old("old-gone")])
    assert step.forget == ["gone", "old-gone"] and step.fetch == []


def test_without_keep_copy_every_stored_message_is_deleted_but_never_one_left_out_by_the_window() -> None:
    step = plan(listed("a", "b"), [stored("a"), too_old("b")], keep_copy=False)
    assert uidls(step.delete) == ["a"]


def test_keep_copy_without_remove_after_days_deletes_nothing() -> None:
    assert plan(listed("a"), [stored("a", days_ago=400)]).delete == []


@pytest.mark.parametrize("settings", [{"keep_copy": False}, {"remove_after_days": 1}], ids=["at-once", "after-days"])
def test_a_message_stored_from_its_headers_alone_is_never_deleted_from_the_server(settings: dict) -> None:
    partial = dataclasses.replace(stored("big", days_ago=30), headers_only=True)
    step = plan(listed("big", "a"), [partial, stored("a", days_ago=30)], **settings)
    assert uidls(step.delete) == ["a"], "the server holds the only whole copy of 'big'"
    assert not pop.due_for_deletion(partial, now=NOW, **{"keep_copy": True, "remove_after_days": None} | settings)
    assert pop.next_deletion({"big": partial}, listed("big"), keep_copy=True, remove_after_days=1) is None
    assert pop.remembered(Listed(1, "big", 100), now=NOW, id="x", headers_only=True).headers_only


@pytest.mark.parametrize(("age_days", "deleted"), [(6.99, False), (7, True), (30, True)])
def test_remove_after_days_counts_from_when_the_message_was_stored(age_days: float, deleted: bool) -> None:
    step = plan(listed("a"), [stored("a", days_ago=age_days)], remove_after_days=7)
    assert uidls(step.delete) == (["a"] if deleted else [])


def test_a_known_uidl_with_another_size_is_another_message_under_a_reused_uidl() -> None:
    step = plan(listed("a", size=250), [stored("a", size=100)], keep_copy=False)
    assert uidls(step.fetch) == ["a"] and step.forget == ["a"]
    assert step.delete == [], "the new message under the old UIDL is not the stored one"


def test_a_reused_uidl_with_the_same_size_is_told_apart_by_its_headers() -> None:
    header = b"From: a@example.com\r\nSubject: first\r\nMessage-ID: <1@example.com>\r\n\r\n"
    seen = dataclasses.replace(stored("a"), header_digest=pop.header_digest(header))
    assert pop.same_message(seen, pop.header_digest(header))
    served_again = b"Status: RO\r\n" + header.replace(b"Subject: first", b"Subject:\r\n first")
    assert pop.same_message(seen, pop.header_digest(served_again)), "headers a server adds or folds do not count"
    other = header.replace(b"<1@", b"<2@")
    assert not pop.same_message(seen, pop.header_digest(other))
    assert not pop.same_message(seen, None), "headers that cannot be read"
    assert not pop.same_message(stored("a"), pop.header_digest(header)), "a record without a digest"


def test_a_state_without_a_size_is_not_taken_for_reuse() -> None:
    assert not plan(listed("a", size=250), [stored("a", size=None)]).has_work


def test_a_uidl_listed_twice_is_neither_fetched_nor_deleted() -> None:
    server = [Listed(1, "a", 100), Listed(2, "a", 120), Listed(3, "b", 100)]
    step = plan(server, [stored("b")], keep_copy=False)
    assert step.ambiguous == ["a"] and step.fetch == [] and uidls(step.delete) == ["b"]
    assert step.forget == [], "a UIDL that is listed is not forgotten"


def test_fetches_per_job_are_bounded_and_the_rest_waits_for_the_next_job() -> None:
    step = plan(listed(*[f"m{i}" for i in range(5)]), [], max_fetches=2)
    assert uidls(step.fetch) == ["m0", "m1"] and step.more


def refused(uidl: str, failures: int) -> PopSeen:
    return PopSeen(uidl=uidl, seen_at=NOW, size=100, failures=failures)


def test_a_refused_fetch_is_tried_again_after_new_mail_until_it_is_unfetchable() -> None:
    known = [refused("a", 1), refused("b", pop.FETCH_ATTEMPTS - 1), refused("c", pop.FETCH_ATTEMPTS)]
    step = plan(listed("a", "b", "c", "d"), known, keep_copy=False)
    assert uidls(step.fetch) == ["d", "a", "b"], "never-tried mail first"
    assert step.unfetchable == ["c"] and step.delete == [], "an unfetchable message is never deleted"
    assert not plan(listed("c"), [refused("c", pop.FETCH_ATTEMPTS)]).has_work


def test_a_failed_fetch_counts_on_the_earlier_record_of_the_same_message() -> None:
    message = Listed(1, "a", 100)
    assert pop.failed(message, now=NOW, before=None).failures == 1
    assert pop.failed(message, now=NOW, before=refused("a", 2)).failures == 3
    other_size = PopSeen("a", NOW, size=999, failures=2)
    assert pop.failed(message, now=NOW, before=other_size).failures == 1, "another message under a reused UIDL"


def test_the_share_of_a_job_counts_retries_too() -> None:
    step = plan(listed("a", "b", "c"), [refused("a", 1)], max_fetches=2)
    assert uidls(step.fetch) == ["b", "c"] and step.more


@pytest.mark.parametrize(
    ("date", "received", "inside"),
    [
        (NOW - timedelta(days=29), None, True),
        (NOW - timedelta(days=31), None, False),
        (None, NOW - timedelta(days=31), False),
        (None, NOW - timedelta(days=1), True),
        (NOW - timedelta(days=1), NOW - timedelta(days=40), True),  # the Date header first
        (None, None, True),  # no date at all: fetched rather than lost
    ],
)
def test_the_window_uses_the_date_header_else_received(
    date: datetime | None, received: datetime | None, inside: bool
) -> None:
    start = pop.window_start(NOW, 30)
    assert pop.in_window(pop.message_time(date, received), start) is inside


def test_the_topmost_received_header_dates_a_message() -> None:
    header = [
        b"Return-Path: <a@example.com>",
        b"Received: from mx.example.com by pop.example.net",
        b"\twith ESMTP id 1; Tue, 01 Dec 2026 10:00:00 +0100",
        b"Received: from client by mx.example.com; Mon, 30 Nov 2026 09:00:00 +0000",
        b"Subject: hi",
        b"",
    ]
    assert pop.received_time(header) == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "header",
    [
        [b"Subject: hi", b""],
        [b"Received: from x by y", b""],
        [b"Received: from x; not a date", b""],
        [b"", b"Received: x; Tue, 01 Dec 2026 10:00:00 +0000"],
    ],
    ids=["none", "no-date", "bad-date", "in-the-body"],
)
def test_a_received_header_without_a_readable_date_is_no_date(header: list[bytes]) -> None:
    assert pop.received_time(header) is None


def test_what_is_remembered_of_a_stored_and_of_a_skipped_message() -> None:
    message = Listed(3, "a", 120)
    assert pop.remembered(message, now=NOW, id="x") == PopSeen("a", NOW, 120, "x", NOW)
    assert pop.remembered(message, now=NOW, id=None) == PopSeen("a", NOW, 120, None, None)


DIGEST = {"server": "pop.example.com\0alice", "keep_copy": True, "remove_after_days": None}


def test_the_digest_changes_with_the_listing_and_with_the_settings_not_with_the_order() -> None:
    base = pop.listing_digest(listed("a", "b"), **DIGEST)
    assert pop.listing_digest(list(reversed(listed("a", "b"))), **DIGEST) == base
    assert pop.listing_digest(listed("a", "b", "c"), **DIGEST) != base
    assert pop.listing_digest(listed("a", "b", size=7), **DIGEST) != base
    assert pop.listing_digest(listed("a", "b"), **DIGEST | {"keep_copy": False}) != base
    assert pop.listing_digest(listed("a", "b"), **DIGEST | {"remove_after_days": 7}) != base
    assert pop.listing_digest(listed("a", "b"), **DIGEST | {"server": "other\0alice"}) != base


def test_the_next_deletion_is_the_earliest_kept_copy_still_on_the_server() -> None:
    known = {s.uidl: s for s in (stored("a", days_ago=2), stored("b", days_ago=5), stored("gone", days_ago=9))}
    known["old"] = too_old("old")
    server = listed("a", "b", "old")
    assert pop.next_deletion(known, server, keep_copy=True, remove_after_days=7) == NOW + timedelta(days=2)
    assert pop.next_deletion(known, server, keep_copy=True, remove_after_days=None) is None
    assert pop.next_deletion({"old": too_old("old")}, server, keep_copy=True, remove_after_days=7) is None


@pytest.mark.parametrize(
    ("stored_checkpoint", "nothing"),
    [
        ({"messages": 2, "listing": "d", "next_deletion_at": None}, True),
        ({"messages": 2, "listing": "d", "next_deletion_at": int((NOW + timedelta(hours=1)).timestamp())}, True),
        ({"messages": 2, "listing": "d", "next_deletion_at": float(NOW.timestamp())}, False),
        ({"messages": 2, "listing": "other"}, False),
        ({"messages": 2}, False),  # an incomplete sync saves no digest
        ({}, False),
    ],
    ids=["same", "deletion-later", "deletion-due", "other-listing", "incomplete", "never"],
)
def test_a_job_ends_before_reading_the_uidl_state_only_when_nothing_can_be_due(
    stored_checkpoint: dict, nothing: bool
) -> None:
    assert pop.nothing_to_do(stored_checkpoint, "d", NOW) is nothing


def test_the_checkpoint_keeps_the_digest_of_complete_syncs_only() -> None:
    assert pop.checkpoint(on_server=3, digest=None, next_deletion_at=NOW) == {"messages": 3}
    assert pop.checkpoint(on_server=3, digest="d", next_deletion_at=NOW) == {
        "messages": 3,
        "listing": "d",
        "next_deletion_at": int(NOW.timestamp()),
    }
