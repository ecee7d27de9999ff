"""Helpers for sync tests: an account saved through the API, syncs run as the worker runs them,
the mail events captured from the bus, and DynamoDB reads counted."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from devstack.aws_calls import count_aws_calls
from devstack.dovecot import MailUser, make_message
from tests.conftest import ApiCall, Caller

READ_OPERATIONS = {"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"}
DEFAULT_MAP = {"inbox": "INBOX", "sent": "Sent", "archive": "Archive"}


def days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def message(subject: str, *, days: float = 1, message_id: str | object | None = ..., **kw: Any) -> bytes:
    extra = {} if message_id is ... else {"message_id": message_id}
    return make_message(subject=subject, date=days_ago(days), **extra, **kw)


@dataclass
class EventCapture:
    queue_url: str
    seen: list[dict[str, Any]] = field(default_factory=list)

    def drain(self) -> list[dict[str, Any]]:
        sqs = boto3.client("sqs")
        while True:
            got = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            messages = got.get("Messages", [])
            if not messages:
                return self.seen
            for m in messages:
                self.seen.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])

    def of_type(self, detail_type: str) -> list[dict[str, Any]]:
        return [e["detail"] for e in self.drain() if e["detail-type"] == detail_type]


def capture_events(bus: str) -> EventCapture:
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="captured-mail-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = boto3.client("events")
    events.put_rule(Name="capture-all", EventBusName=bus, EventPattern=json.dumps({"source": ["mailsync"]}))
    events.put_targets(Rule="capture-all", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    return EventCapture(url)


def count_dynamodb_calls() -> AbstractContextManager[Counter[str]]:
    """Counts DynamoDB operations, PynamoDB's and boto3's alike, by operation name."""
    return count_aws_calls("dynamodb")


def reads(counts: Counter) -> int:
    return sum(n for op, n in counts.items() if op in READ_OPERATIONS)


@dataclass
class Account:
    api: ApiCall
    user: MailUser
    caller: Caller
    tenant: str = "acme"

    def settings_body(self) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": self.user.imaps_port,
            "username": self.user.username,
            "password": self.user.password,
            "security": "ssl",
        }

    def sync(self, reason: str = "user", **kw: Any):
        from mailsync.services.sync_jobs import SyncJob, run_job

        return run_job(SyncJob(tenant_id=self.tenant, user_id=self.caller.user, reason=reason), **kw)

    def messages(self, **query: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {**query, "limit": 100, **({"cursor": cursor} if cursor else {})}
            qs = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
            page = self.api("GET", "/v1/users/me/messages", query=qs, caller=self.caller)
            assert page.status == 200, page.body
            out.extend(page.body["messages"])
            cursor = page.body["next_cursor"]
            if not cursor:
                return out

    def synced(self, **query: Any) -> dict[str, dict[str, Any]]:
        """Synced messages by subject (tests give every message a unique subject)."""
        return {m["subject"]: m for m in self.messages(**query) if m["state"] == "synced"}

    def by_subject(self) -> dict[str, dict[str, Any]]:
        return {m["subject"]: m for m in self.messages()}


def _mail_user(mailbox: Account | MailUser) -> MailUser:
    return mailbox.user if isinstance(mailbox, Account) else mailbox


def server_subjects(mailbox: Account | MailUser, folder: str) -> list[str]:
    """The subjects in ``folder`` as another mail client sees them, sorted."""
    with _mail_user(mailbox).client() as imap:
        out = []
        for uid in imap.uids(folder):
            raw = imap.fetch_raw(folder, uid)
            out.append(raw.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode())
        return sorted(out)


def server_flags(mailbox: Account | MailUser, folder: str, subject: str) -> set[str]:
    """The server's flags on the message with this subject in ``folder``."""
    with _mail_user(mailbox).client() as imap:
        for uid in imap.uids(folder):
            if f"Subject: {subject}\r\n".encode() in imap.fetch_raw(folder, uid):
                return imap.flags(folder, uid)
    raise AssertionError(f"{subject!r} not in {folder!r}")


def connect_account(
    api: ApiCall, user: MailUser, folder_map: dict[str, str] | None = None, who: str = "alice"
) -> Account:
    account = Account(api, user, Caller(who, "acme", "user"))
    saved = api("PUT", "/v1/users/me/mail-settings", account.settings_body(), caller=account.caller)
    assert saved.status == 201, saved.body
    mapped = api("PUT", "/v1/users/me/folder-map", folder_map or DEFAULT_MAP, caller=account.caller)
    assert mapped.status == 200, mapped.body
    return account


def flavoured_account(request: Any, api: ApiCall, monkeypatch: Any, folder_map: dict[str, str]) -> Account:
    """An account on the Dovecot flavour named by ``request.param`` ("full" or "basic")."""
    from mailsync.config import get_settings

    if request.param == "basic":
        server = request.getfixturevalue("dovecot_basic")
        # Each flavour has its own CA; trust the basic one's for this test.
        monkeypatch.setenv("MAILSYNC_EXTRA_CA_FILE", str(server.ca_file))
        get_settings.cache_clear()
        user = request.getfixturevalue("mail_user_basic")
    else:
        user = request.getfixturevalue("mail_user")
    return connect_account(api, user, folder_map)


def per_account(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sync job bodies as one job per account: a group's accounts each, a single-account body as it is."""
    jobs = []
    for body in bodies:
        for tenant, user in body.get("accounts") or [(body["tenant_id"], body["user_id"])]:
            jobs.append({"tenant_id": tenant, "user_id": user, "reason": body["reason"]})
    return jobs


LogLines = Callable[[], list[dict[str, Any]]]


@contextmanager
def captured_log_lines(handler: str) -> Iterator[LogLines]:
    """Every JSON line the shared Logger writes while it is open, parsed; ``handler`` is the
    function whose module sets the Logger up as the local runtime does."""
    from devstack.lambda_runtime import load_handler

    load_handler(handler)
    from mailsync.observability import logger

    stream = io.StringIO()
    previous = logger.registered_handler.setStream(stream)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    finally:
        logger.registered_handler.setStream(previous)
