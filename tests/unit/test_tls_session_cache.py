"""The TLS session cache's bounds and keys (transport.TlsSessionCache): least recently used
dropped first, a session dropped at its server's lifetime or an hour after the verified handshake
it descends from, a key per host, port and context, nothing for a context that does not verify,
and many threads at once."""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass

from mailsync.mailbox.transport import TLS_SESSION_MAX_AGE_SECONDS, TlsSessionCache, tls_session_key

NOW = 1_800_000_000.0


@dataclass(frozen=True)
class FakeSession:
    """What the cache reads of an ``ssl.SSLSession``: when it was made and its lifetime."""

    time: int = int(NOW)
    timeout: int = 7200


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def cache(max_entries: int = 10, max_age: float = TLS_SESSION_MAX_AGE_SECONDS) -> tuple[TlsSessionCache, Clock]:
    clock = Clock()
    return TlsSessionCache(max_entries=max_entries, max_age=max_age, clock=clock), clock


def test_the_least_recently_used_session_goes_first_when_full() -> None:
    sessions, _ = cache(max_entries=3)
    for key in ("a", "b", "c"):
        sessions.keep(key, FakeSession(), NOW)  # type: ignore[arg-type]
    assert sessions.offer("a") is not None  # "a" is now the most recently used
    sessions.keep("d", FakeSession(), NOW)  # type: ignore[arg-type]
    assert sessions.offer("b") is None
    assert [k for k in ("a", "c", "d") if sessions.offer(k) is not None] == ["a", "c", "d"]
    stats = sessions.stats()
    assert (stats.entries, stats.evicted, stats.kept) == (3, 1, 4)


def test_a_session_is_dropped_when_its_server_lifetime_ends() -> None:
    sessions, clock = cache()
    sessions.keep("a", FakeSession(timeout=300), NOW)  # type: ignore[arg-type]
    clock.now = NOW + 299
    assert sessions.offer("a") is not None
    clock.now = NOW + 300
    assert sessions.offer("a") is None
    assert sessions.stats().entries == 0
    assert sessions.stats().expired == 1


def test_resumptions_do_not_stretch_one_certificate_verification_past_the_max_age() -> None:
    # Each resumed connection brings a fresh ticket with a fresh lifetime; the verified handshake
    # it descends from stays the same.
    sessions, clock = cache(max_age=3600)
    clock.now = NOW + 3000
    sessions.keep("a", FakeSession(time=int(clock.now), timeout=7200), NOW)  # type: ignore[arg-type]
    clock.now = NOW + 3599
    assert sessions.offer("a") is not None
    clock.now = NOW + 3600
    assert sessions.offer("a") is None


def test_a_session_already_past_its_age_is_not_kept() -> None:
    sessions, _ = cache(max_age=3600)
    sessions.keep("a", FakeSession(), NOW - 3600)  # type: ignore[arg-type]
    assert sessions.offer("a") is None
    assert sessions.stats().kept == 0


def test_the_newest_session_of_a_server_replaces_the_older() -> None:
    sessions, _ = cache()
    older, newer = FakeSession(time=int(NOW) - 10), FakeSession()
    sessions.keep("a", older, NOW)  # type: ignore[arg-type]
    sessions.keep("a", newer, NOW)  # type: ignore[arg-type]
    entry = sessions.offer("a")
    assert entry is not None and entry.session is newer
    assert sessions.stats().entries == 1


def test_keys_differ_by_host_port_and_context() -> None:
    context, other_context = ssl.create_default_context(), ssl.create_default_context()
    key = tls_session_key("imap.example.com", 993, context)
    assert key is not None
    assert key == tls_session_key("imap.example.com", 993, context)
    others = [
        tls_session_key("imap.example.net", 993, context),
        tls_session_key("imap.example.com", 995, context),
        tls_session_key("imap.example.com", 993, other_context),
    ]
    assert all(other is not None and other != key for other in others)


def test_a_context_that_does_not_verify_gets_no_key() -> None:
    no_hostname = ssl.create_default_context()
    no_hostname.check_hostname = False
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    assert tls_session_key("imap.example.com", 993, no_hostname) is None
    assert tls_session_key("imap.example.com", 993, unverified) is None


def test_many_threads_keep_and_offer_within_the_bound() -> None:
    sessions, _ = cache(max_entries=100)
    start = threading.Barrier(8)

    def work(thread: int) -> None:
        start.wait()
        for i in range(500):
            sessions.keep((thread, i), FakeSession(), NOW)  # type: ignore[arg-type]
            sessions.offer((thread, i - 1))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    stats = sessions.stats()
    assert stats.kept == 8 * 500
    assert stats.entries == 100
    assert stats.evicted == 8 * 500 - 100


def test_a_server_that_declined_is_kept_and_offered_nothing_until_max_age_has_passed() -> None:
    sessions, clock = cache(max_age=3600)
    sessions.keep("a", FakeSession(), NOW)  # type: ignore[arg-type]
    sessions.decline("a")
    assert sessions.declined("a") and sessions.offer("a") is None
    sessions.keep("a", FakeSession(), NOW)  # type: ignore[arg-type]
    assert sessions.offer("a") is None
    clock.now += 3600
    assert not sessions.declined("a")
    sessions.keep("a", FakeSession(time=int(clock.now)), clock.now)  # type: ignore[arg-type]
    assert sessions.offer("a") is not None
