"""POP3 sync jobs against hostile servers: the same budgets as IMAP (time, bytes, count).

No real server floods, trickles or lies about sizes on purpose, so a small scripted POP3 server
(tests/fixtures/hostile_server.py's ``HostileServer``) stands in for one; the job runs through the
worker's own path (``sync_jobs.run_job``) with moto, and must end as ``server_misbehaving`` for
that account only, within its time budget and memory bound, with nothing stored half-way and the
account not left ``syncing``. A message over the size cap is stored from its headers alone: its
body is never asked for.
"""

from __future__ import annotations

import email.utils
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import ApiCall, Caller
from tests.fixtures.hostile_server import HostileServer, Peer, Script
from tests.integration.sync_support import Account

MB = 1024 * 1024
HEADROOM = 64 * MB
FLOOD_LIMIT = 300 * MB
# Dated yesterday: inside the sync window whenever the test runs.
YESTERDAY = email.utils.format_datetime(datetime.now(UTC) - timedelta(days=1)).encode()
HEADER = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: huge\r\n"
    b"Date: " + YESTERDAY + b"\r\n"
    b"Message-ID: <huge@example.com>\r\n"
)

Handler = Callable[[Peer, list[bytes]], None]


def pop3_maildrop(handlers: dict[bytes, Handler], seen: list[bytes]) -> Script:
    """USER/PASS accepted; each command recorded in ``seen`` and answered by its handler, else +OK."""

    def script(peer: Peer) -> None:
        for line in peer.dialogue(b"+OK hostile POP3 ready"):
            words = line.split(b" ")
            command = words[0].upper()
            seen.append(command)
            if command == b"QUIT":
                peer.send(b"+OK bye\r\n")
                return
            if command in handlers:
                handlers[command](peer, words[1:])
            else:
                peer.send(b"+OK\r\n")

    return script


def one_message(size: int) -> dict[bytes, Handler]:
    return {
        b"UIDL": lambda peer, args: peer.send(b"+OK\r\n1 uid-1\r\n.\r\n"),
        b"LIST": lambda peer, args: peer.send(b"+OK\r\n1 %d\r\n.\r\n" % size),
        b"TOP": lambda peer, args: peer.send(b"+OK\r\n" + HEADER + b"\r\n.\r\n"),
    }


@pytest.fixture
def hostile_env(monkeypatch: pytest.MonkeyPatch, aws: dict[str, str]) -> None:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", "true")
    monkeypatch.setenv("MAILSYNC_ALLOW_INSECURE", "true")
    monkeypatch.setenv("MAILSYNC_IMAP_TIMEOUT_SECONDS", "5")
    get_settings.cache_clear()


def account_on(api: ApiCall, server: HostileServer, **settings: Any) -> Account:
    caller = Caller("alice", "acme", "user")
    body = settings | {
        "host": server.host,
        "port": server.port,
        "username": "victim",
        "password": "pw",
        "security": "none",
        "protocol": "pop3",
    }
    saved = api("PUT", "/v1/users/me/mail-settings", body, caller=caller)
    assert saved.status == 201, saved.body
    return Account(api, None, caller)  # type: ignore[arg-type]


def measured_sync(account: Account) -> tuple[Any, int, float]:
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = account.sync()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak, time.monotonic() - started


def assert_misbehaving(account: Account, result: Any, text: str) -> None:
    assert (result.status, result.error) == ("failed", "server_misbehaving"), result
    settings = account.api("GET", "/v1/users/me/mail-settings", caller=account.caller).body
    assert settings["status"] == "server_misbehaving" and text in settings["last_error"], settings
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert status["state"] == "failed", status
    assert account.messages() == [], "nothing stored half-way"


def test_an_endless_uidl_listing_stops_at_the_line_budget(
    api: ApiCall, hostile_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_MAX_UNTAGGED_PER_COMMAND", "1000")
    get_settings.cache_clear()

    def endless(peer: Peer, args: list[bytes]) -> None:
        if peer.send(b"+OK\r\n"):
            n = 0
            while peer.send(b"".join(b"%d uid-%d\r\n" % (n + i, n + i) for i in range(1, 501))) and n < 10**7:
                n += 500

    with HostileServer(pop3_maildrop({b"UIDL": endless}, [])) as server:
        account = account_on(api, server)
        result, peak, _ = measured_sync(account)
    assert_misbehaving(account, result, "more than 1000 lines in one POP3 response")
    assert peak < HEADROOM, f"peak {peak / MB:.0f} MB"


def test_an_endless_line_stops_at_the_line_cap(api: ApiCall, hostile_env: None) -> None:
    def endless_line(peer: Peer, args: list[bytes]) -> None:
        if peer.send(b"+OK\r\n1 "):
            peer.flood(b"x" * 65536, FLOOD_LIMIT)

    with HostileServer(pop3_maildrop({b"UIDL": endless_line}, [])) as server:
        account = account_on(api, server)
        result, peak, _ = measured_sync(account)
    assert_misbehaving(account, result, "a line longer than")
    assert peak < HEADROOM, f"peak {peak / MB:.0f} MB"


def test_a_message_over_the_cap_is_stored_from_its_headers_and_its_body_never_asked_for(
    api: ApiCall, hostile_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bytes] = []
    four_gb = 4 * 1024 * MB
    with HostileServer(pop3_maildrop(one_message(four_gb), seen)) as server:
        account = account_on(api, server)
        result = account.sync()
    assert result.status == "synced", result
    [stored] = account.messages()
    assert (stored["subject"], stored["too_large"], stored["size"]) == ("huge", True, four_gb)
    assert b"RETR" not in seen and b"DELE" not in seen, seen


@pytest.mark.parametrize(
    "settings", [{"keep_copy": False}, {"keep_copy": True, "remove_after_days": 1}], ids=["at-once", "after-days"]
)
def test_a_message_over_the_cap_stored_from_its_headers_is_never_deleted_from_the_server(
    api: ApiCall, hostile_env: None, monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]
) -> None:
    from tests.integration.pop3_support import Clock

    clock = Clock(monkeypatch, datetime.now(UTC))
    seen: list[bytes] = []
    with HostileServer(pop3_maildrop(one_message(4 * 1024 * MB), seen)) as server:
        account = account_on(api, server, **settings)
        assert account.sync().status == "synced"
        clock.advance(days=2)
        assert account.sync().status == "synced"
    [stored] = account.messages()
    assert stored["too_large"] is True
    assert b"DELE" not in seen and b"RETR" not in seen, seen


def test_messages_the_server_never_gives_are_tried_a_bounded_number_of_times_then_reported(
    api: ApiCall, hostile_env: None
) -> None:
    """201 listed messages whose TOP and RETR all fail: more than one job's share, so continuation
    jobs follow, but each message is tried FETCH_ATTEMPTS times only and the account then says so."""
    from mailsync.sync.planner.pop import FETCH_ATTEMPTS, MAX_FETCHES_PER_JOB

    count = MAX_FETCHES_PER_JOB + 1
    seen: list[bytes] = []
    handlers: dict[bytes, Handler] = {
        b"UIDL": lambda peer, args: peer.send(
            b"+OK\r\n" + b"".join(b"%d uid-%d\r\n" % (n, n) for n in range(1, count + 1)) + b".\r\n"
        ),
        b"LIST": lambda peer, args: peer.send(
            b"+OK\r\n" + b"".join(b"%d 300\r\n" % n for n in range(1, count + 1)) + b".\r\n"
        ),
        b"TOP": lambda peer, args: peer.send(b"-ERR no such message\r\n"),
        b"RETR": lambda peer, args: peer.send(b"-ERR no such message\r\n"),
    }
    with HostileServer(pop3_maildrop(handlers, seen)) as server:
        account = account_on(api, server, keep_copy=False)
        results = [account.sync()]
        while results[-1].status == "incomplete" and len(results) < 20:
            results.append(account.sync("continue"))
        again = account.sync()
    jobs_needed = -(-count * FETCH_ATTEMPTS // MAX_FETCHES_PER_JOB)
    assert len(results) <= jobs_needed, [r.status for r in results]
    assert seen.count(b"RETR") == count * FETCH_ATTEMPTS, "each message tried a bounded number of times"
    assert (results[-1].status, results[-1].error) == ("failed", "server_misbehaving"), results[-1]
    settings = account.api("GET", "/v1/users/me/mail-settings", caller=account.caller).body
    assert settings["status"] == "server_misbehaving", settings
    assert f"lists {count} message(s) it refused to give" in settings["last_error"], settings
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert status["state"] == "failed", "not stuck syncing"
    assert (again.status, again.error) == ("failed", "server_misbehaving"), "still said while they are listed"
    assert b"DELE" not in seen and account.messages() == []


def test_another_message_of_the_same_size_under_a_stored_uidl_is_fetched_and_never_deleted(
    api: ApiCall, hostile_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.pop3_support import Clock

    clock = Clock(monkeypatch, datetime.now(UTC))
    first = HEADER.replace(b"Subject: huge", b"Subject: one")
    second = first.replace(b"Subject: one", b"Subject: two").replace(b"<huge@", b"<swap@")
    assert len(first) == len(second)
    served = {"header": first}
    seen: list[bytes] = []
    handlers: dict[bytes, Handler] = {
        **one_message(300),
        b"TOP": lambda peer, args: peer.send(b"+OK\r\n" + served["header"] + b"\r\n.\r\n"),
        b"RETR": lambda peer, args: peer.send(b"+OK\r\n" + served["header"] + b"\r\nbody\r\n.\r\n"),
    }
    with HostileServer(pop3_maildrop(handlers, seen)) as server:
        account = account_on(api, server, keep_copy=True, remove_after_days=1)
        assert account.sync().status == "synced"
        served["header"] = second  # the server reuses "uid-1", same size, for another message
        clock.advance(days=2)
        result = account.sync()
        assert result.status == "incomplete", result
        assert account.sync("continue").status == "synced"
    assert b"DELE" not in seen, seen
    assert sorted(m["subject"] for m in account.messages()) == ["one", "two"]


def test_a_message_bigger_than_listed_stops_at_the_response_budget(
    api: ApiCall, hostile_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_MAX_POP3_RESPONSE_BYTES", str(2 * MB))
    get_settings.cache_clear()

    def flood(peer: Peer, args: list[bytes]) -> None:
        if peer.send(b"+OK\r\n" + HEADER + b"\r\n"):
            peer.flood(b"y" * 998 + b"\r\n", FLOOD_LIMIT)

    with HostileServer(pop3_maildrop({**one_message(100), b"RETR": flood}, [])) as server:
        account = account_on(api, server)
        result, peak, _ = measured_sync(account)
    assert_misbehaving(account, result, "in one POP3 response")
    assert peak < HEADROOM, f"peak {peak / MB:.0f} MB"


def test_a_trickling_server_is_cut_off_at_the_job_budget(
    api: ApiCall, hostile_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_JOB_BUDGET_SECONDS", "3")
    get_settings.cache_clear()

    def trickle(peer: Peer, args: list[bytes]) -> None:
        peer.trickle(b"+OK\r\n" + HEADER + b"\r\n" + b"z" * 10_000 + b"\r\n.\r\n", 0.1)

    with HostileServer(pop3_maildrop({**one_message(100), b"RETR": trickle}, [])) as server:
        account = account_on(api, server)
        # Not measured_sync: tracemalloc slows all the work after the cut-off (recording the
        # failure) several times over, which on a busy machine took this past 9 s.
        started = time.monotonic()
        result = account.sync()
        elapsed = time.monotonic() - started
    assert_misbehaving(account, result, "time budget")
    # Cut at the 3 s budget, not when the trickle ends (over 1,000 s); the room is for a loaded machine.
    assert elapsed < 12, elapsed


def test_a_server_without_top_is_read_with_retr(api: ApiCall, hostile_env: None) -> None:
    """TOP is optional in RFC 1939; after one refusal whole messages are read (and dated)."""
    seen: list[bytes] = []
    long_ago = email.utils.format_datetime(datetime.now(UTC) - timedelta(days=400)).encode()
    old = HEADER.replace(YESTERDAY, long_ago).replace(b"huge@", b"old@")
    bodies = {b"1": HEADER.replace(b"Subject: huge", b"Subject: recent"), b"2": old}
    handlers: dict[bytes, Handler] = {
        b"UIDL": lambda peer, args: peer.send(b"+OK\r\n1 uid-1\r\n2 uid-2\r\n.\r\n"),
        b"LIST": lambda peer, args: peer.send(b"+OK\r\n1 300\r\n2 300\r\n.\r\n"),
        b"TOP": lambda peer, args: peer.send(b"-ERR unknown command\r\n"),
        b"RETR": lambda peer, args: peer.send(b"+OK\r\n" + bodies[args[0]] + b"\r\nbody\r\n.\r\n"),
    }
    with HostileServer(pop3_maildrop(handlers, seen)) as server:
        account = account_on(api, server)
        result = account.sync()
    assert result.status == "synced", result
    assert [m["subject"] for m in account.messages()] == ["recent"], "the old one is left out by the window"
    assert seen.count(b"TOP") == 1 and seen.count(b"RETR") == 2, seen


def test_without_top_a_message_over_the_cap_is_left_on_the_server_not_read(api: ApiCall, hostile_env: None) -> None:
    seen: list[bytes] = []
    handlers: dict[bytes, Handler] = {
        **one_message(4 * 1024 * MB),
        b"TOP": lambda peer, args: peer.send(b"-ERR unknown command\r\n"),
    }
    with HostileServer(pop3_maildrop(handlers, seen)) as server:
        account = account_on(api, server)
        first, second = account.sync(), account.sync()
    assert (first.status, second.status) == ("synced", "synced")
    assert account.messages() == [] and b"RETR" not in seen and b"DELE" not in seen, seen
    assert seen.count(b"TOP") == 1, "remembered: not tried again"
