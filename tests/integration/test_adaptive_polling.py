"""Adaptive polling end to end (README "Scheduling"): scheduler ticks at chosen times on moto
(the due index carrying last_activity_at, each tenant's office hours read once per tick), activity
recorded by the API and by syncs against Dovecot, CRM changes and sync requests enqueued at once,
and office hours in the tenant settings API."""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import pytest

from devstack.aws_calls import count_aws_calls
from tests.conftest import ApiCall, Caller
from tests.integration.sync_support import Account, connect_account, days_ago, message

ADMIN = Caller("root", "acme", "admin")
TENANT_SETTINGS = "/v1/tenant/settings"
NEVER = {"days": []}  # office hours on no day: what a tenant's accounts do does not depend on the clock


def amsterdam(*fields: int) -> int:
    return int(datetime(*fields, tzinfo=ZoneInfo("Europe/Amsterdam")).timestamp())


WEDNESDAY_10 = amsterdam(2026, 12, 2, 10, 0)
THURSDAY_03 = amsterdam(2026, 12, 3, 3, 0)  # 21:00 on Wednesday in New York
SATURDAY_10 = amsterdam(2026, 12, 5, 10, 0)


def drain(queue_url: str) -> list[tuple[str, str]]:
    """(user, reason) of every job on the queue, removed."""
    sqs = boto3.client("sqs")
    jobs = []
    for _ in range(10_000):  # a budget: the queue empties long before
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
        if not got.get("Messages"):
            break
        for m in got["Messages"]:
            body = json.loads(m["Body"])
            # A tick sends groups of accounts; user requests and CRM changes a job of one account.
            users = [user for _, user in body["accounts"]] if "accounts" in body else [body["user_id"]]
            jobs.extend((user, body["reason"]) for user in users)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return jobs


def tick(aws: dict[str, str], now: int) -> set[str]:
    from mailsync.services import scheduling

    scheduling.enqueue_due_accounts(now)
    jobs = drain(aws["SYNC_QUEUE_URL"])
    assert {reason for _, reason in jobs} <= {"schedule"}
    users = [user for user, _ in jobs]
    assert len(users) == len(set(users)), "one job per account and tick"
    return set(users)


def aws_calls() -> AbstractContextManager[Counter[str]]:
    """Every DynamoDB call by operation."""
    return count_aws_calls("dynamodb")


def seed(tenant: str, users: list[str], **fields: Any) -> None:
    from mailsync import dal
    from mailsync.domain import Account as Stored
    from mailsync.services import scheduling

    dal.put_accounts(
        Stored(tenant, u, "imap.example.com", 993, u, "ssl", **scheduling.due_fields(tenant, u, True, "ok") | fields)
        for u in users
    )


# --- the scheduler at chosen times ---------------------------------------------------------------


def test_scheduler_ticks_follow_office_hours_activity_and_backoff(aws: dict[str, str]) -> None:
    from mailsync import dal
    from mailsync.domain import OfficeHours

    # Given idle accounts of acme (default office hours: Amsterdam, weekdays 07-19) and of
    # initech (New York), one acme account active 10 minutes before each tick, one whose backoff
    # has ended and one still backing off,
    idle = [f"user{i:02d}" for i in range(30)]
    new_yorkers = [f"ny{i:02d}" for i in range(15)]
    seed("acme", idle)
    seed("initech", new_yorkers)
    dal.save_office_hours("initech", OfficeHours(time_zone="America/New_York"))

    def scenario(now: int) -> None:
        seed("acme", ["busy"], last_activity_at=now - 600)
        seed("acme", ["recovering"], next_sync_at=now - 30)
        seed("acme", ["failing"], next_sync_at=now + 3600)

    everyone = {*idle, *new_yorkers, "busy", "recovering"}

    # In office hours on both sides of the ocean (Wednesday 16:00 / 10:00), every due account;
    scenario(amsterdam(2026, 12, 2, 16, 0))
    assert tick(aws, amsterdam(2026, 12, 2, 16, 0)) == everyone

    # at 10:00 in Amsterdam (04:00 in New York) all of acme's, and New York's on their slots only;
    scenario(WEDNESDAY_10)
    polled = tick(aws, WEDNESDAY_10)
    assert {*idle, "busy", "recovering"} <= polled
    assert len(polled & set(new_yorkers)) < 6

    # at night and at the weekend, over 15 one-minute ticks: each idle account exactly once, the
    # active and the recovering one every tick, the failing one never.
    for start in (THURSDAY_03, SATURDAY_10):
        counts: Counter[str] = Counter()
        for n in range(15):
            scenario(start + 60 * n)
            counts.update(tick(aws, start + 60 * n))
        assert {u: counts[u] for u in idle + new_yorkers} == dict.fromkeys(idle + new_yorkers, 1)
        assert (counts["busy"], counts["recovering"], counts["failing"]) == (15, 15, 0)


def test_a_quiet_tick_reads_each_tenants_office_hours_once_and_writes_nothing(aws: dict[str, str]) -> None:
    from mailsync.config import get_settings
    from mailsync.services import scheduling

    for t in range(3):
        seed(f"tenant{t}", [f"user{i:03d}" for i in range(40)])
    with aws_calls() as calls:
        sent = scheduling.enqueue_due_accounts(THURSDAY_03)
    assert 0 < sent < 20  # about 120 / 15
    assert calls["GetItem"] == 3
    assert calls["Query"] == get_settings().due_shards
    writes = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
    assert not writes & set(calls)


def test_a_cron_schedule_polls_every_due_account_every_tick(aws: dict[str, str], monkeypatch) -> None:
    """A schedule whose period is unknown must not leave accounts between its ticks."""
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_SCHEDULE_RATE", "cron(0/5 * * * ? *)")
    get_settings.cache_clear()
    seed("acme", [f"user{i:02d}" for i in range(20)])
    assert len(tick(aws, THURSDAY_03)) == 20


# --- activity -----------------------------------------------------------------------------------


def account_item(aws: dict[str, str], user: str) -> dict[str, Any]:
    key = {"tenant_id": {"S": "acme"}, "user_id": {"S": user}}
    return boto3.client("dynamodb").get_item(TableName=aws["ACCOUNTS_TABLE"], Key=key)["Item"]


def test_saved_settings_make_an_account_active_and_the_due_index_carries_it(api: ApiCall, aws) -> None:
    from mailsync import dal
    from mailsync.config import get_settings
    from mailsync.services import scheduling

    assert put(api, NEVER).status == 200
    before = int(time.time())
    body = {"host": "imap.example.com", "username": "alice", "password": "pw-123456"}
    assert api("PUT", "/v1/users/me/mail-settings", body).status == 201
    saved_at = int(account_item(aws, "alice")["last_activity_at"]["N"])
    assert before <= saved_at <= time.time()
    shard = scheduling.shard_for("acme", "alice", get_settings().due_shards)
    [due] = dal.due_accounts(shard, saved_at)
    assert (due.user_id, due.last_activity_at) == ("alice", saved_at)

    # A new user's first sync comes at the next tick, at any hour; half an hour later the
    # account is back to its quiet slots (this tenant has no office hours).
    assert tick(aws, saved_at + 60) == {"alice"}
    later = [tick(aws, saved_at + 1800 + 60 * n) for n in range(15)]
    assert sum("alice" in p for p in later) == 1


@pytest.fixture
def quiet_account(api: ApiCall, local_mail_env, mail_user) -> Account:
    """alice on Dovecot, synced once, in a tenant without office hours, her activity long past."""
    from mailsync import dal

    assert put(api, NEVER).status == 200
    account = connect_account(api, mail_user)
    with mail_user.client() as imap:
        imap.append("INBOX", message("first", days=1), internal_date=days_ago(1))
    assert account.sync().status == "synced"
    dal.record_activity("acme", "alice", 1_000)
    return account


def test_a_sync_that_changes_something_records_activity_and_a_no_op_does_not(
    quiet_account: Account, mail_user, aws
) -> None:
    assert quiet_account.sync().status == "synced"  # nothing new
    assert account_item(aws, "alice")["last_activity_at"] == {"N": "1000"}

    with mail_user.client() as imap:
        imap.append("INBOX", message("second", days=1), internal_date=days_ago(1))
    started = int(time.time())
    assert quiet_account.sync().outcome.created == 1
    assert int(account_item(aws, "alice")["last_activity_at"]["N"]) >= started


def test_crm_changes_and_sync_requests_are_enqueued_at_once_and_keep_the_account_polled(
    quiet_account: Account, aws
) -> None:
    from mailsync.sync.planner import polling

    # Given a moment when alice's quiet slot does not come up,
    now = int(time.time())
    offset = polling.quiet_offset("acme", "alice")
    while polling.quiet_slot(offset, now, 60):
        now += 60
    assert tick(aws, now) == set()

    # a CRM change and a sync request each enqueue a job at once,
    [synced] = quiet_account.messages()
    assert quiet_account.api("PATCH", f"/v1/messages/{synced['id']}", {"seen": True}).status == 200
    assert quiet_account.api("POST", "/v1/users/me/sync").status == 202
    assert drain(aws["SYNC_QUEUE_URL"]) == [("alice", "push"), ("alice", "user")]

    # and the job that pushes the change makes alice active: polled at every tick for a while.
    assert quiet_account.sync(reason="push").outcome.pushed == 1
    assert all(tick(aws, now + 60 * n) == {"alice"} for n in range(1, 6))


# --- the tenant settings API --------------------------------------------------------------------


def put(api: ApiCall, office_hours: Any, caller: Caller = ADMIN):
    body = {"confidential_keywords": ["geheim"], "confidential_contacts": [], "office_hours": office_hours}
    return api("PUT", TENANT_SETTINGS, body, caller=caller)


def test_office_hours_in_the_tenant_settings(api: ApiCall, aws) -> None:
    defaults = {
        "time_zone": "Europe/Amsterdam",
        "days": ["mon", "tue", "wed", "thu", "fri"],
        "start": "07:00",
        "end": "19:00",
    }
    assert api("GET", TENANT_SETTINGS, caller=ADMIN).body["office_hours"] == defaults

    hours = {"time_zone": "America/New_York", "days": ["sat", "mon"], "start": "22:00", "end": "06:00"}
    saved = put(api, hours)
    assert saved.status == 200, saved.raw
    assert saved.body["office_hours"] == hours | {"days": ["mon", "sat"]}
    assert api("GET", TENANT_SETTINGS, caller=ADMIN).body["office_hours"] == saved.body["office_hours"]
    # Omitted fields take their defaults; an omitted office_hours keeps the saved ones.
    assert put(api, {"time_zone": "UTC"}).body["office_hours"] == defaults | {"time_zone": "UTC"}
    kept = api("PUT", TENANT_SETTINGS, {"confidential_keywords": [], "confidential_contacts": []}, caller=ADMIN)
    assert kept.body["office_hours"]["time_zone"] == "UTC"

    # Users may not read or change them; other tenants never see them.
    user = Caller("alice", "acme", "user")
    assert api("GET", TENANT_SETTINGS, caller=user).status == 403
    assert put(api, hours, caller=user).status == 403
    other = Caller("root", "globex", "admin")
    assert api("GET", TENANT_SETTINGS, caller=other).body["office_hours"] == defaults
    assert api("GET", TENANT_SETTINGS, caller=ADMIN).body["office_hours"]["time_zone"] == "UTC"


@pytest.mark.parametrize(
    ("office_hours", "field"),
    [
        ({"time_zone": "Europe/Amsterdm"}, "office_hours.time_zone"),
        ({"time_zone": "Europe/Zürich"}, "office_hours.time_zone"),
        ({"time_zone": "Asia/東京"}, "office_hours.time_zone"),
        ({"time_zone": "../../../etc/passwd"}, "office_hours.time_zone"),
        ({"time_zone": "A" * 300_000}, "office_hours.time_zone"),
        ({"time_zone": "\ud800"}, "office_hours.time_zone"),
        ({"time_zone": None}, "office_hours.time_zone"),
        ({"start": "25:00"}, "office_hours.start"),
        ({"start": "7am"}, "office_hours.start"),
        ({"end": "１９:００"}, "office_hours.end"),
        ({"days": ["mon", "mon"]}, "office_hours.days"),
        ({"days": ["maandag"]}, "office_hours.days.0"),
        ({"days": ["mon"] * 100_000}, "office_hours.days"),
        ({"days": {"mon": True}}, "office_hours.days"),
        ({"weekends": True}, "office_hours.weekends"),
        ("07:00-19:00", "office_hours"),
        ([1, 2], "office_hours"),
    ],
)
def test_bad_office_hours_are_a_422_naming_the_field(api: ApiCall, aws, office_hours: Any, field: str) -> None:
    answer = put(api, office_hours)
    assert (answer.status, answer.body["error"]["field"]) == (422, field), answer.raw[:300]
    assert "etc/passwd" not in answer.raw and "Zürich" not in answer.raw  # the value is never echoed
    assert api("GET", TENANT_SETTINGS, caller=ADMIN).body["office_hours"]["time_zone"] == "Europe/Amsterdam"


def test_the_due_index_carries_last_activity_at_and_nothing_else(aws: dict[str, str]) -> None:
    """The scheduler reads the rule's input from the index alone; anything more would only make
    every tick's Query read more."""
    table = boto3.client("dynamodb").describe_table(TableName=aws["ACCOUNTS_TABLE"])["Table"]
    [due] = table["GlobalSecondaryIndexes"]
    assert due["Projection"] == {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["last_activity_at"]}
