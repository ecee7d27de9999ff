"""Adaptive polling (``sync.planner.polling``): office hours by the tenant's wall clock, the quiet
interval's slots, and the decision per due account."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from mailsync.domain import WEEKDAYS, DueAccount, OfficeHours
from mailsync.sync.planner import polling
from mailsync.sync.planner.polling import Poll

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
DEFAULT = OfficeHours()


def at(zone: str, *fields: int) -> int:
    """Epoch seconds of a wall-clock time in ``zone`` (fold 0 in a repeated hour)."""
    return int(datetime(*fields, tzinfo=ZoneInfo(zone)).timestamp())


def utc(*fields: int) -> int:
    return int(datetime(*fields, tzinfo=UTC).timestamp())


# --- office hours -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ((2026, 12, 2, 6, 59), False),  # Wednesday, winter (UTC+1)
        ((2026, 12, 2, 7, 0), True),
        ((2026, 12, 2, 18, 59), True),
        ((2026, 12, 2, 19, 0), False),  # the end is exclusive
        ((2026, 7, 1, 7, 0), True),  # Wednesday, summer (UTC+2)
        ((2026, 7, 1, 6, 59), False),
        ((2026, 12, 4, 18, 30), True),  # Friday
        ((2026, 12, 5, 10, 0), False),  # Saturday
        ((2026, 12, 6, 10, 0), False),  # Sunday
        ((2026, 12, 7, 0, 30), False),  # Monday night
    ],
)
def test_default_office_hours_are_amsterdam_weekdays_7_to_19(local: tuple[int, ...], expected: bool) -> None:
    assert OfficeHours("Europe/Amsterdam", ("mon", "tue", "wed", "thu", "fri"), "07:00", "19:00") == DEFAULT
    assert polling.in_office_hours(DEFAULT, at("Europe/Amsterdam", *local)) is expected


def test_office_hours_follow_the_wall_clock_across_daylight_saving_changes() -> None:
    every_day = OfficeHours(days=WEEKDAYS)
    # Spring forward (Sunday 29 March 2026, 02:00 CET -> 03:00 CEST): 07:00 is 05:00 UTC from now on.
    assert polling.in_office_hours(every_day, utc(2026, 3, 28, 5, 30)) is False  # 06:30 CET
    assert polling.in_office_hours(every_day, utc(2026, 3, 29, 5, 30)) is True  # 07:30 CEST
    assert polling.in_office_hours(every_day, utc(2026, 3, 29, 16, 59)) is True  # 18:59 CEST
    assert polling.in_office_hours(every_day, utc(2026, 3, 29, 17, 0)) is False  # 19:00 CEST
    # Fall back (Sunday 25 October 2026): 07:00 is 06:00 UTC again.
    assert polling.in_office_hours(every_day, utc(2026, 10, 25, 5, 30)) is False  # 06:30 CET
    assert polling.in_office_hours(every_day, utc(2026, 10, 25, 6, 0)) is True  # 07:00 CET
    assert polling.in_office_hours(every_day, utc(2026, 10, 24, 5, 0)) is True  # 07:00 CEST, the day before


def test_hours_within_the_skipped_or_repeated_hour() -> None:
    night = OfficeHours(days=WEEKDAYS, start="02:00", end="03:00")
    # Spring: the wall clock jumps from 01:59:59 CET to 03:00 CEST; 02:xx never happens.
    assert polling.in_office_hours(night, utc(2026, 3, 29, 0, 59)) is False  # 01:59 CET
    assert polling.in_office_hours(night, utc(2026, 3, 29, 1, 0)) is False  # 03:00 CEST
    # Autumn: 02:00-03:00 happens twice, and both count.
    assert polling.in_office_hours(night, utc(2026, 10, 25, 0, 30)) is True  # 02:30 CEST
    assert polling.in_office_hours(night, utc(2026, 10, 25, 1, 30)) is True  # 02:30 CET
    assert polling.in_office_hours(night, utc(2026, 10, 25, 2, 0)) is False  # 03:00 CET


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ((2026, 12, 4, 21, 59), False),  # Friday before the start
        ((2026, 12, 4, 22, 0), True),  # Friday's window starts
        ((2026, 12, 5, 5, 59), True),  # ... and runs into Saturday
        ((2026, 12, 5, 6, 0), False),
        ((2026, 12, 5, 22, 30), False),  # Saturday's window: not listed
        ((2026, 12, 7, 3, 0), False),  # Monday early: Sunday's window, not listed
        ((2026, 12, 7, 22, 30), True),  # Monday's window
        ((2026, 12, 8, 3, 0), True),  # ... on Tuesday morning
    ],
)
def test_hours_past_midnight_belong_to_the_day_they_start(local: tuple[int, ...], expected: bool) -> None:
    night_shift = OfficeHours(days=WEEKDAYS[:5], start="22:00", end="06:00")
    assert polling.in_office_hours(night_shift, at("Europe/Amsterdam", *local)) is expected


def test_equal_start_and_end_is_a_whole_day_and_no_days_is_never() -> None:
    always = OfficeHours(time_zone="UTC", days=WEEKDAYS, start="00:00", end="00:00")
    assert all(polling.in_office_hours(always, utc(2026, 12, 1) + h * 3599) for h in range(24 * 8))
    mondays = OfficeHours(time_zone="UTC", days=("mon",), start="09:00", end="09:00")
    assert polling.in_office_hours(mondays, utc(2026, 12, 7, 9, 0)) is True  # Monday
    assert polling.in_office_hours(mondays, utc(2026, 12, 8, 8, 59)) is True  # Tuesday, still Monday's day
    assert polling.in_office_hours(mondays, utc(2026, 12, 8, 9, 0)) is False
    never = OfficeHours(days=())
    assert not any(polling.in_office_hours(never, utc(2026, 12, 1) + h * 3599) for h in range(24 * 8))


@pytest.mark.parametrize(
    ("zone", "local_hhmm", "expected"),
    [
        ("America/New_York", (8, 59), True),  # 14:59 in Amsterdam
        ("America/New_York", (19, 1), False),
        ("Asia/Kolkata", (7, 0), True),  # UTC+5:30
        ("Asia/Kolkata", (6, 59), False),
        ("Pacific/Chatham", (18, 59), True),  # UTC+13:45 in December
        ("Pacific/Chatham", (19, 0), False),
    ],
)
def test_a_tenant_in_another_time_zone_uses_its_own_clock(
    zone: str, local_hhmm: tuple[int, int], expected: bool
) -> None:
    hours = OfficeHours(time_zone=zone)
    assert polling.in_office_hours(hours, at(zone, 2026, 12, 2, *local_hhmm)) is expected  # a Wednesday


def test_a_zone_this_runtime_does_not_know_counts_as_office_hours() -> None:
    for zone in ("Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", ""):
        assert polling.in_office_hours(OfficeHours(time_zone=zone, days=()), utc(2026, 12, 5, 3, 0)) is True


def test_known_time_zones_come_from_tzdata_not_the_os() -> None:
    zones = polling.known_time_zones()
    assert {"Europe/Amsterdam", "America/New_York", "UTC", "Asia/Kolkata"} <= zones
    assert not {"localtime", "posixrules", "/etc/localtime", "../etc/passwd", ""} & zones
    assert len(zones) > 400


@pytest.mark.parametrize(("text", "minutes"), [("00:00", 0), ("07:05", 425), ("23:59", 1439)])
def test_times_of_day(text: str, minutes: int) -> None:
    assert polling.minutes_of(text) == minutes


@pytest.mark.parametrize("text", ["24:00", "7:00", "07:60", "07:00:00", "0700", "٠٧:٠٠", " 07:00", ""])
def test_times_of_day_that_are_not(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        polling.minutes_of(text)


# --- the quiet interval -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "seconds"),
    [
        ("rate(1 minute)", 60),
        ("rate(5 minutes)", 300),
        ("rate(2 hours)", 7200),
        ("rate(1 day)", 86400),
        ("rate(30 seconds)", 30),  # the local stack's kind of tick
        ("cron(0/5 * * * ? *)", polling.QUIET_INTERVAL_SECONDS),
        ("rate(0 minutes)", polling.QUIET_INTERVAL_SECONDS),
        ("rate(one minute)", polling.QUIET_INTERVAL_SECONDS),
    ],
)
def test_tick_seconds_from_the_schedule_expression(rate: str, seconds: int) -> None:
    assert polling.tick_seconds(rate) == seconds


@pytest.mark.parametrize(("tick", "slots_per_interval"), [(60, 15), (300, 3), (120, 7.5)])
def test_every_account_gets_its_slot_once_per_quiet_interval(tick: int, slots_per_interval: float) -> None:
    # Given accounts at every offset and a day of ticks (a few seconds late each, as EventBridge is),
    ticks = range(utc(2026, 12, 5), utc(2026, 12, 6), tick)
    polls: Counter[int] = Counter()
    for start in ticks:
        for offset in range(0, polling.QUIET_INTERVAL_SECONDS, 7):
            if polling.quiet_slot(offset, start + 3, tick):
                polls[offset] += 1
    # Then each is polled exactly once per quiet interval: 96 times a day.
    assert set(polls.values()) == {24 * 3600 // polling.QUIET_INTERVAL_SECONDS}
    assert len(polls) == len(range(0, polling.QUIET_INTERVAL_SECONDS, 7))
    assert len(ticks) / 96 == slots_per_interval


def test_a_tick_as_long_as_the_interval_or_longer_is_always_a_slot() -> None:
    assert all(polling.quiet_slot(o, 1_000_000, 900) for o in range(0, 900, 13))
    assert all(polling.quiet_slot(o, 1_000_000, 3600) for o in range(0, 900, 13))


def test_the_slots_spread_accounts_evenly_over_the_ticks() -> None:
    offsets = [polling.quiet_offset(f"tenant{i % 40}", f"user{i}") for i in range(15_000)]
    assert offsets == [polling.quiet_offset(f"tenant{i % 40}", f"user{i}") for i in range(15_000)]  # stable
    base = utc(2026, 12, 5, 2, 0)
    per_tick = [sum(polling.quiet_slot(o, base + 60 * t, 60) for o in offsets) for t in range(15)]
    assert sum(per_tick) == 15_000
    assert max(per_tick) < 1.15 * 1000 and min(per_tick) > 0.85 * 1000


# --- the decision -----------------------------------------------------------------------------

NIGHT = utc(2026, 12, 5, 2, 0)  # 03:00 in Amsterdam on a Saturday


def due(user: str = "alice", next_sync_at: int = 0, last_activity_at: int | None = None) -> DueAccount:
    return DueAccount("acme", user, next_sync_at, last_activity_at)


def test_in_office_hours_every_due_account_is_polled_every_tick() -> None:
    for user in (f"user{i}" for i in range(50)):
        assert polling.decide(due(user), now=NIGHT, tick_seconds=60, office_hours_now=True) is Poll.OFFICE_HOURS


def test_outside_office_hours_an_idle_account_waits_for_its_slot() -> None:
    offset = polling.quiet_offset("acme", "alice")
    ticks = [NIGHT + 60 * n for n in range(15)]
    decisions = [polling.decide(due(), now=t, tick_seconds=60, office_hours_now=False) for t in ticks]
    assert sorted(decisions) == sorted([Poll.QUIET_SLOT] + [Poll.WAIT] * 14)
    polled = ticks[decisions.index(Poll.QUIET_SLOT)]
    assert any((s - offset) % polling.QUIET_INTERVAL_SECONDS == 0 for s in range(polled - 59, polled + 1))


def test_a_recently_active_account_is_polled_every_tick_at_any_hour() -> None:
    assert (
        polling.decide(due(last_activity_at=NIGHT - 60), now=NIGHT, tick_seconds=60, office_hours_now=False)
        is Poll.ACTIVE
    )
    edge = NIGHT - polling.ACTIVE_WINDOW_SECONDS
    assert (
        polling.decide(due(last_activity_at=edge + 1), now=NIGHT, tick_seconds=60, office_hours_now=False)
        is Poll.ACTIVE
    )
    stale = polling.decide(due(last_activity_at=edge), now=NIGHT, tick_seconds=60, office_hours_now=False)
    assert stale in (Poll.WAIT, Poll.QUIET_SLOT)


def test_an_account_whose_backoff_ended_is_retried_at_once() -> None:
    account = due(next_sync_at=NIGHT - 5)
    assert polling.decide(account, now=NIGHT, tick_seconds=60, office_hours_now=False) is Poll.RETRY


def test_activity_is_recorded_when_none_is_on_record_or_what_is_is_a_few_minutes_old() -> None:
    now = 1_700_000_000
    assert polling.record_activity(None, now)
    assert not polling.record_activity(now - 1, now)
    assert not polling.record_activity(now - polling.ACTIVITY_REFRESH_SECONDS + 1, now)
    assert polling.record_activity(now - polling.ACTIVITY_REFRESH_SECONDS, now)
    # The refresh is well inside the active window: a busy account never drops out of it.
    assert polling.ACTIVITY_REFRESH_SECONDS < polling.ACTIVE_WINDOW_SECONDS / 2


def test_no_activity_is_recorded_while_office_hours_last_the_whole_active_window() -> None:
    hours = OfficeHours()  # Europe/Amsterdam, weekdays 07:00-19:00
    amsterdam = ZoneInfo("Europe/Amsterdam")

    def at(*fields: int) -> int:
        return int(datetime(*fields, tzinfo=amsterdam).timestamp())

    never = None
    assert not polling.record_activity(never, at(2026, 12, 2, 10, 0), hours)  # polled every tick anyway
    assert not polling.record_activity(never, at(2026, 12, 2, 18, 29), hours)  # the window ends 18:59
    assert polling.record_activity(never, at(2026, 12, 2, 18, 31), hours)  # it ends after 19:00
    assert polling.record_activity(never, at(2026, 12, 2, 6, 50), hours)  # it starts before 07:00
    assert polling.record_activity(never, at(2026, 12, 5, 10, 0), hours)  # a Saturday
    assert polling.record_activity(never, at(2026, 12, 4, 18, 45), hours)  # Friday evening into the weekend
    # Unknown hours: recorded as outside them.
    assert polling.record_activity(never, at(2026, 12, 2, 10, 0), None)
