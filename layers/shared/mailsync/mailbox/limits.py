"""How many connections one worker process keeps open to a mail host, and to one mailbox.

Two limits, both in memory (no DynamoDB writes: a sync that finds nothing must write nothing):

- per host name: at most ``host_concurrency`` connections (``MAILSYNC_HOST_CONCURRENCY``), with
  larger defaults for the big providers whose one host name serves millions of users
  (``BIG_PROVIDERS``), each overridable with ``MAILSYNC_HOST_CONCURRENCY_OVERRIDES``
  (``host=n,host=n``). A job waits for room up to ``wait_seconds``;
- per (host, user name): at most one connection, never waited for — a second one would be a
  duplicate job for the same mailbox (or two CRM users sharing one login), and providers count
  connections per mailbox (Gmail: 15, Microsoft 365: 20).

Both are per process, so a deployment's total is the limit times the concurrent worker
invocations (``WorkerMaximumConcurrency``). Writers are still serialised per account by the
account's lease in DynamoDB.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from mailsync.config import Settings

# Host names shared by very many users: a small per-host limit would queue every user of a
# provider behind a handful of connections.
BIG_PROVIDERS: Mapping[str, int] = {
    "outlook.office365.com": 64,
    "imap.gmail.com": 64,
    "imap-mail.outlook.com": 32,
    "imap.mail.yahoo.com": 32,
    "imap.mail.me.com": 32,
}


class HostBusy(Exception):
    """No room for another connection: to this host (``mailbox`` False) or to this mailbox."""

    def __init__(self, host: str, *, mailbox: bool) -> None:
        super().__init__(f"{'mailbox' if mailbox else 'host'} busy: {host}")
        self.host = host
        self.mailbox = mailbox


def host_limit(host: str, settings: Settings) -> int:
    """Connections this process may open to ``host`` at once."""
    name = _name(host)
    return settings.host_concurrency_by_host().get(name, BIG_PROVIDERS.get(name, settings.host_concurrency))


def _name(host: str) -> str:
    return host.strip().lower().rstrip(".")


class ConnectionLimits:
    """The process's counters; thread-safe (the worker syncs many accounts at once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Keyed by the limit too: a changed setting starts a fresh count instead of resizing
        # a semaphore others hold. Each with the number of jobs using it: a host's entry goes
        # when its last job ends, as users choose hosts and a warm process sees many.
        self._hosts: dict[tuple[str, int], tuple[threading.BoundedSemaphore, int]] = {}
        self._mailboxes: set[tuple[str, str]] = set()

    def _take(self, key: tuple[str, int]) -> threading.BoundedSemaphore:
        with self._lock:
            semaphore, users = self._hosts.get(key) or (threading.BoundedSemaphore(key[1]), 0)
            self._hosts[key] = (semaphore, users + 1)
            return semaphore

    def _drop(self, key: tuple[str, int]) -> None:
        with self._lock:
            semaphore, users = self._hosts[key]
            if users > 1:
                self._hosts[key] = (semaphore, users - 1)
            else:
                del self._hosts[key]

    def hosts_in_use(self) -> int:
        """The hosts (with their limit) that jobs use now."""
        with self._lock:
            return len(self._hosts)

    @contextmanager
    def slot(self, host: str, username: str, *, limit: int, wait_seconds: float) -> Iterator[None]:
        """Hold one connection's room for the block; ``HostBusy`` when there is none."""
        host = _name(host)
        mailbox = (host, username)
        with self._lock:
            if mailbox in self._mailboxes:
                raise HostBusy(host, mailbox=True)
            self._mailboxes.add(mailbox)
        key = (host, limit)
        try:
            semaphore = self._take(key)
            try:
                if not semaphore.acquire(timeout=max(0.0, wait_seconds)):
                    raise HostBusy(host, mailbox=False)
                try:
                    yield
                finally:
                    semaphore.release()
            finally:
                self._drop(key)
        finally:
            with self._lock:
                self._mailboxes.discard(mailbox)


LIMITS = ConnectionLimits()
