"""In-process connection limits (``mailbox.limits``): per mail host and per mailbox, across threads."""

from __future__ import annotations

import threading

import pytest

from mailsync.config import Settings
from mailsync.mailbox.limits import BIG_PROVIDERS, ConnectionLimits, HostBusy, host_limit


def test_big_providers_get_larger_limits_and_overrides_win() -> None:
    settings = Settings(host_concurrency=3, host_concurrency_overrides="imap.gmail.com=7, Mail.Example.org=2")
    assert host_limit("mail.small.example", settings) == 3
    assert host_limit("outlook.office365.com", settings) == BIG_PROVIDERS["outlook.office365.com"] > 3
    assert host_limit("IMAP.gmail.com.", settings) == 7
    assert host_limit("mail.example.org", settings) == 2


@pytest.mark.parametrize("bad", ["imap.example.com", "imap.example.com=0", "=3", "a=b"])
def test_a_malformed_override_fails_when_the_settings_are_read(bad: str) -> None:
    with pytest.raises(ValueError, match="host=n"):
        Settings(host_concurrency_overrides=bad)


def test_at_most_limit_connections_per_host_at_once_the_rest_wait() -> None:
    limits = ConnectionLimits()
    release = threading.Event()
    inside = threading.Semaphore(0)
    lock = threading.Lock()
    now = {"count": 0, "peak": 0}

    def job(user: str) -> None:
        with limits.slot("imap.example.com", user, limit=2, wait_seconds=30):
            with lock:
                now["count"] += 1
                now["peak"] = max(now["peak"], now["count"])
            inside.release()
            release.wait(30)
            with lock:
                now["count"] -= 1

    threads = [threading.Thread(target=job, args=(f"user{i}",)) for i in range(5)]
    for t in threads:
        t.start()
    assert inside.acquire(timeout=10) and inside.acquire(timeout=10)  # two got in
    assert not inside.acquire(timeout=0.3)  # the third waits while both are held
    # A job that may not wait is told the host is busy.
    with pytest.raises(HostBusy) as busy, limits.slot("imap.example.com", "late", limit=2, wait_seconds=0):
        pass
    assert busy.value.mailbox is False
    # Another host is not held up.
    with limits.slot("mail.other.example", "user0", limit=2, wait_seconds=0):
        pass
    release.set()
    for t in threads:
        t.join(10)
    assert now == {"count": 0, "peak": 2}


def test_one_connection_per_mailbox_never_waited_for() -> None:
    limits = ConnectionLimits()
    with limits.slot("imap.example.com", "alice", limit=10, wait_seconds=30):
        with pytest.raises(HostBusy) as busy, limits.slot("IMAP.example.com", "alice", limit=10, wait_seconds=30):
            pass
        assert busy.value.mailbox is True
        # Another mailbox on the same host is fine.
        with limits.slot("imap.example.com", "bob", limit=10, wait_seconds=0):
            pass
    # Released with the block, also after an exception inside it.
    with pytest.raises(RuntimeError), limits.slot("imap.example.com", "alice", limit=10, wait_seconds=0):
        raise RuntimeError("the sync failed")
    with limits.slot("imap.example.com", "alice", limit=1, wait_seconds=0):
        pass


def test_a_busy_host_does_not_keep_the_mailbox_taken() -> None:
    limits = ConnectionLimits()
    with (
        limits.slot("imap.example.com", "alice", limit=1, wait_seconds=0),
        pytest.raises(HostBusy),
        limits.slot("imap.example.com", "bob", limit=1, wait_seconds=0),
    ):
        pass
    # bob's failed attempt left nothing behind.
    with limits.slot("imap.example.com", "bob", limit=1, wait_seconds=0):
        pass


def test_a_host_is_forgotten_when_its_last_job_ends_and_still_limited_while_in_use() -> None:
    # Users choose their hosts: a warm worker that kept a count per host ever seen grew with them.
    limits = ConnectionLimits()
    for i in range(1000):
        with limits.slot(f"imap{i}.example.com", "u", limit=2, wait_seconds=0):
            pass
    assert limits.hosts_in_use() == 0
    with limits.slot("imap.example.com", "a", limit=1, wait_seconds=0):
        assert limits.hosts_in_use() == 1
        with pytest.raises(HostBusy), limits.slot("imap.example.com", "b", limit=1, wait_seconds=0):
            pass
        assert limits.hosts_in_use() == 1, "a refused job leaves the holder's count alone"
    with limits.slot("imap.example.com", "b", limit=1, wait_seconds=0):
        pass
    assert limits.hosts_in_use() == 0
