"""Adaptive polling in the services, on the in-memory data layer: which due accounts a scheduler
tick enqueues (office hours read once per tenant), when activity is recorded, and the office
hours in the tenant settings."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from mailsync.domain import WEEKDAYS, Account, DueAccount, OfficeHours
from mailsync.errors import Forbidden
from mailsync.identity import Principal
from mailsync.schemas import TenantSettingsIn
from mailsync.services import confidentiality, scheduling
from mailsync.sync.engine import SyncOutcome
from mailsync.sync.planner import polling
from mailsync.sync.planner.polling import Poll
from tests.unit.fake_dal import Fakes

SHARDS = 4  # what the fake_dal fixture configures
ADMIN = Principal(user_id="root", tenant_id="acme", is_admin=True)
ALICE = Principal(user_id="alice", tenant_id="acme", is_admin=False)
OTHER_ADMIN = Principal(user_id="root", tenant_id="globex", is_admin=True)


def amsterdam(*fields: int) -> int:
    return int(datetime(*fields, tzinfo=ZoneInfo("Europe/Amsterdam")).timestamp())


WEDNESDAY_10 = amsterdam(2026, 12, 2, 10, 0)
WEDNESDAY_23 = amsterdam(2026, 12, 2, 23, 0)
SATURDAY_10 = amsterdam(2026, 12, 5, 10, 0)


def account(tenant: str, user: str, **fields: object) -> Account:
    values: dict[str, object] = {"due_shard": scheduling.shard_for(tenant, user, SHARDS), "next_sync_at": 0, **fields}
    return Account(tenant, user, "imap.example.com", 993, user, "ssl", **values)  # type: ignore[arg-type]


def tick(fakes: Fakes, now: int) -> set[str]:
    fakes.queue.sent.clear()
    scheduling.enqueue_due_accounts(now)
    return {user for _, user, _ in fakes.queue.jobs()}


def test_in_office_hours_a_tick_polls_every_due_account(fake_dal: Fakes) -> None:
    fake_dal.dal.put_accounts(account("acme", f"user{i}") for i in range(40))
    assert len(tick(fake_dal, WEDNESDAY_10)) == 40


@pytest.mark.parametrize("start", [WEDNESDAY_23, SATURDAY_10], ids=["night", "weekend"])
def test_outside_office_hours_each_idle_account_is_polled_once_per_quiet_interval(fake_dal: Fakes, start: int) -> None:
    # Given 60 idle accounts, one that was active 10 minutes ago, one whose backoff ended and one
    # still backing off,
    idle = [f"user{i}" for i in range(60)]
    fake_dal.dal.put_accounts(account("acme", u) for u in idle)
    fake_dal.dal.put_accounts(
        [
            account("acme", "busy", last_activity_at=start - 600),
            account("acme", "recovering", next_sync_at=start - 30),
            account("acme", "failing", next_sync_at=start + 3600),
        ]
    )
    # When the scheduler ticks every minute for 15 minutes,
    polled = [tick(fake_dal, start + 60 * n) for n in range(15)]
    # Then each idle account is polled exactly once, the busy and the recovering one every tick,
    # and the failing one never.
    for user in idle:
        assert sum(user in p for p in polled) == 1, user
    assert all({"busy", "recovering"} <= p for p in polled)
    assert not any("failing" in p for p in polled)
    assert sum(len(p) for p in polled) == 60 + 2 * 15


def test_a_tenant_in_another_time_zone_is_polled_by_its_own_office_hours(fake_dal: Fakes) -> None:
    # Given a tenant in New York (office hours 07:00-19:00 there) and acme with the defaults,
    fake_dal.dal.save_office_hours("initech", OfficeHours(time_zone="America/New_York"))
    fake_dal.dal.put_accounts(account("initech", f"ny{i}") for i in range(30))
    fake_dal.dal.put_accounts(account("acme", f"ams{i}") for i in range(30))
    # At 20:00 in Amsterdam (14:00 in New York) every New York account is polled, only some of acme's;
    polled = tick(fake_dal, amsterdam(2026, 12, 2, 20, 0))
    assert {f"ny{i}" for i in range(30)} <= polled
    assert len(polled - {f"ny{i}" for i in range(30)}) < 10
    # at 10:00 in Amsterdam (04:00 in New York) the other way round.
    polled = tick(fake_dal, WEDNESDAY_10)
    assert {f"ams{i}" for i in range(30)} <= polled
    assert len(polled - {f"ams{i}" for i in range(30)}) < 10


def test_each_tenants_office_hours_are_read_once_per_tick(fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real = fake_dal.dal.get_office_hours

    def counted(tenant_id: str, **options: float) -> OfficeHours | None:
        reads.append(tenant_id)
        return real(tenant_id, **options)

    monkeypatch.setattr(scheduling.dal, "get_office_hours", counted)
    fake_dal.dal.put_accounts(account(f"tenant{i % 3}", f"user{i}") for i in range(90))
    assert len(tick(fake_dal, WEDNESDAY_10)) == 90
    assert sorted(reads) == ["tenant0", "tenant1", "tenant2"]
    tick(fake_dal, WEDNESDAY_10 + 60)
    assert len(reads) == 6  # read again at the next tick: a change applies at once


def test_a_tenant_whose_office_hours_cannot_be_read_is_polled_as_in_office_hours(
    fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fake_dal.dal.get_office_hours

    def broken(tenant_id: str, **options: float) -> OfficeHours | None:
        if tenant_id == "broken":
            raise RuntimeError("throttled")
        return real(tenant_id, **options)

    monkeypatch.setattr(scheduling.dal, "get_office_hours", broken)
    fake_dal.dal.put_accounts(account("broken", f"b{i}") for i in range(20))
    fake_dal.dal.put_accounts(account("acme", f"a{i}") for i in range(20))
    polled = tick(fake_dal, WEDNESDAY_23)
    assert {f"b{i}" for i in range(20)} <= polled
    assert len(polled) < 30


def test_only_a_sync_that_changed_something_records_activity(fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduling.time, "time", lambda: 1_700_000_000.5)
    alice = account("acme", "alice")
    fake_dal.dal.put_accounts([alice])
    for quiet in (SyncOutcome(), SyncOutcome(detached=3, imap_commands=9, folder_errors={"Sent": "folder_missing"})):
        scheduling.record_activity(alice, quiet)
        assert fake_dal.dal.get_account("acme", "alice").last_activity_at is None
    for busy in (SyncOutcome(created=1), SyncOutcome(relinked=1), SyncOutcome(flag_updates=1), SyncOutcome(pushed=1)):
        fake_dal.dal.put_accounts([alice])
        scheduling.record_activity(alice, busy)
        assert fake_dal.dal.get_account("acme", "alice").last_activity_at == 1_700_000_000


def test_activity_on_record_is_refreshed_only_once_it_is_a_few_minutes_old(
    fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = 1_700_000_000
    monkeypatch.setattr(scheduling.time, "time", lambda: now + 0.5)
    recent = now - polling.ACTIVITY_REFRESH_SECONDS + 1
    alice = account("acme", "alice", last_activity_at=recent)
    fake_dal.dal.put_accounts([alice])
    scheduling.record_activity(alice, SyncOutcome(created=1))
    assert fake_dal.dal.get_account("acme", "alice").last_activity_at == recent
    # Still active at the next ticks: the skipped write shortened the window by under the refresh.
    due = DueAccount("acme", "alice", 0, recent)
    assert polling.decide(due, now=now + 60, tick_seconds=60, office_hours_now=False) is Poll.ACTIVE

    stale = now - polling.ACTIVITY_REFRESH_SECONDS
    alice = account("acme", "alice", last_activity_at=stale)
    fake_dal.dal.put_accounts([alice])
    scheduling.record_activity(alice, SyncOutcome(flag_updates=1))
    assert fake_dal.dal.get_account("acme", "alice").last_activity_at == now


def test_a_failed_activity_write_does_not_fail_the_sync(fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    def throttled(tenant_id: str, user_id: str, at: int) -> None:
        raise RuntimeError("ProvisionedThroughputExceededException")

    monkeypatch.setattr(scheduling.dal, "record_activity", throttled)
    scheduling.record_activity(account("acme", "alice"), SyncOutcome(created=1))  # logged, not raised


def test_a_users_change_to_the_settings_makes_the_account_active(
    fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduling.time, "time", lambda: 1_700_000_000.0)
    assert scheduling.due_fields("acme", "alice", True, "pending", active=True)["last_activity_at"] == 1_700_000_000
    assert "last_activity_at" not in scheduling.due_fields("acme", "alice", True, "ok")
    assert scheduling.due_fields("acme", "alice", False, "pending", active=True) == {
        "due_shard": None,
        "next_sync_at": None,
        "last_activity_at": 1_700_000_000,  # not due now, but active when it is again
    }


# --- office hours in the tenant settings ------------------------------------------------------------


def body(**office_hours: object) -> TenantSettingsIn:
    return TenantSettingsIn.model_validate(
        {"confidential_keywords": ["geheim"], "confidential_contacts": [], "office_hours": office_hours}
    )


def test_the_tenant_settings_show_the_default_office_hours(fake_dal: Fakes) -> None:
    hours = confidentiality.get_tenant_settings(ADMIN).office_hours
    assert hours.model_dump() == {
        "time_zone": "Europe/Amsterdam",
        "days": ["mon", "tue", "wed", "thu", "fri"],
        "start": "07:00",
        "end": "19:00",
    }


def test_an_admin_saves_office_hours_for_the_tenant_only(fake_dal: Fakes) -> None:
    saved = confidentiality.put_tenant_settings(ADMIN, body(time_zone="Asia/Kolkata", days=["sun", "mon"]))
    assert saved.office_hours.model_dump() == {
        "time_zone": "Asia/Kolkata",
        "days": ["mon", "sun"],  # in weekday order
        "start": "07:00",
        "end": "19:00",
    }
    assert fake_dal.dal.office_hours["acme"] == OfficeHours("Asia/Kolkata", ("mon", "sun"), "07:00", "19:00")
    assert confidentiality.get_tenant_settings(ADMIN).office_hours == saved.office_hours
    assert confidentiality.get_tenant_settings(OTHER_ADMIN).office_hours.time_zone == "Europe/Amsterdam"
    # A PUT without office_hours keeps them.
    kept = confidentiality.put_tenant_settings(
        ADMIN, TenantSettingsIn(confidential_keywords=["x"], confidential_contacts=[])
    )
    assert kept.office_hours == saved.office_hours
    with pytest.raises(Forbidden):
        confidentiality.put_tenant_settings(ALICE, body(time_zone="UTC"))
    assert fake_dal.dal.office_hours["acme"].time_zone == "Asia/Kolkata"


@pytest.mark.parametrize(
    ("office_hours", "field"),
    [
        ({"time_zone": "Europe/Amsterdm"}, "time_zone"),
        ({"time_zone": "localtime"}, "time_zone"),
        ({"time_zone": "../../etc/passwd"}, "time_zone"),
        ({"time_zone": "Europe/Zürich"}, "time_zone"),
        ({"time_zone": "E" * 100_000}, "time_zone"),
        ({"time_zone": ""}, "time_zone"),
        ({"time_zone": 1}, "time_zone"),
        ({"days": ["monday"]}, "days"),
        ({"days": ["mon", "mon"]}, "days"),
        ({"days": list(WEEKDAYS) * 2}, "days"),
        ({"days": "mon"}, "days"),
        ({"start": "7:00"}, "start"),
        ({"start": "24:00"}, "start"),
        ({"end": "19:00:00"}, "end"),
        ({"end": "１９:００"}, "end"),
        ({"lunch": "12:00"}, "lunch"),
    ],
)
def test_bad_office_hours_are_rejected_naming_the_field(office_hours: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        body(**office_hours)
    [error] = caught.value.errors()
    assert error["loc"][:2] == ("office_hours", field)
