"""Adaptive polling: whether the scheduler polls a due account at this tick (README "Scheduling").

Every tick during the tenant's office hours; outside them every ``QUIET_INTERVAL_SECONDS``, on
a slot of its own (a stable offset from a hash of tenant and user), so the night's polls spread
evenly over the ticks without a stored next-poll time — the schedule costs no write per poll.
An account active within ``ACTIVE_WINDOW_SECONDS`` (a user's edit, a sync that changed
something) is polled every tick at any hour, and one whose failure backoff has ended is retried
at once. CRM changes and users' sync requests enqueue their job themselves, at once.

Pure: the tick's time, the tenant's office hours and what the due index holds for the account
in; the decision out. Time zones come from ``zoneinfo`` (the ``tzdata`` package ships with the
layer: the Lambda image need not have a zone database).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from enum import StrEnum
from functools import cache
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailsync.domain import WEEKDAYS, DueAccount, OfficeHours

QUIET_INTERVAL_SECONDS = 15 * 60
ACTIVE_WINDOW_SECONDS = 30 * 60
# How stale the recorded activity may be before a sync that changed something records it again.
# Each record is a write of the whole account item and of its due-index entry (about 3 WRU); a
# mailbox receiving mail would otherwise pay it for every message. The cost: an account stays
# "active" between ACTIVE_WINDOW_SECONDS - ACTIVITY_REFRESH_SECONDS and ACTIVE_WINDOW_SECONDS
# after its last change.
ACTIVITY_REFRESH_SECONDS = 5 * 60
DAY_MINUTES = 24 * 60
TIME_OF_DAY = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_RATE = re.compile(r"^rate\(\s*(\d{1,6})\s+(second|minute|hour|day)s?\s*\)$")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class Poll(StrEnum):
    """Why an account is polled at a tick, or ``WAIT``."""

    RETRY = "retry"  # its failure backoff ended
    ACTIVE = "active"
    OFFICE_HOURS = "office_hours"
    QUIET_SLOT = "quiet_slot"  # outside office hours, its turn of the quiet interval
    WAIT = "wait"


def decide(account: DueAccount, *, now: int, tick_seconds: int, office_hours_now: bool) -> Poll:
    """``account`` came out of the due index at the tick ``now`` (its ``next_sync_at`` has come);
    ``office_hours_now``: its tenant's ``in_office_hours`` at ``now``."""
    if account.next_sync_at > 0:
        return Poll.RETRY
    if account.last_activity_at is not None and now - account.last_activity_at < ACTIVE_WINDOW_SECONDS:
        return Poll.ACTIVE
    if office_hours_now:
        return Poll.OFFICE_HOURS
    if quiet_slot(quiet_offset(account.tenant_id, account.user_id), now, tick_seconds):
        return Poll.QUIET_SLOT
    return Poll.WAIT


def record_activity(last_activity_at: int | None, now: int, hours: OfficeHours | None = None) -> bool:
    """Whether a sync that changed something at ``now`` writes it down, given the activity the
    account already has on record (read with the account, before the sync) and its tenant's
    office hours (None: not known). Not when office hours last the whole active window: the
    account is polled every tick then anyway (office hours are one stretch a day, so both ends
    in them is all of it in them), and a mailbox receiving mail in office hours would otherwise
    rewrite its account item and due-index entry for nearly every message."""
    if hours is not None and in_office_hours(hours, now) and in_office_hours(hours, now + ACTIVE_WINDOW_SECONDS):
        return False
    return last_activity_at is None or now - last_activity_at >= ACTIVITY_REFRESH_SECONDS


def quiet_offset(tenant_id: str, user_id: str) -> int:
    """The account's place in the quiet interval, in seconds: stable, and spread evenly."""
    # Other bytes of the digest than the due shard's (scheduling.shard_for), so that the accounts
    # of one shard do not share slots.
    digest = hashlib.sha256(f"{tenant_id}\0{user_id}".encode()).digest()
    return int.from_bytes(digest[4:8], "big") % QUIET_INTERVAL_SECONDS


def quiet_slot(offset: int, now: int, tick_seconds: int) -> bool:
    """Whether one of the account's quiet-interval slots (``offset`` + k x interval) falls in this
    tick's span. Ticks are numbered ``now // tick_seconds`` (a tick that runs a few seconds late
    keeps its number), tick n spanning ((n-1) x tick, n x tick]: with one-minute ticks each
    account's slot comes once every 15 ticks; with 5-minute ticks once every 3."""
    if tick_seconds >= QUIET_INTERVAL_SECONDS:
        return True
    end = (now // tick_seconds) * tick_seconds
    return (end - offset) // QUIET_INTERVAL_SECONDS != (end - tick_seconds - offset) // QUIET_INTERVAL_SECONDS


def tick_seconds(schedule_rate: str) -> int:
    """The scheduler's period from its EventBridge expression, ``rate(1 minute)`` and the like. For
    anything else (a cron expression) the quiet interval: every tick is then a slot, so no account
    can fall between ticks."""
    match = _RATE.match(schedule_rate.strip())
    if match is None or int(match.group(1)) == 0:
        return QUIET_INTERVAL_SECONDS
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def in_office_hours(hours: OfficeHours, now: float) -> bool:
    """Whether ``now`` (epoch seconds) is within ``hours``, by the wall clock of its time zone (so
    across DST changes too). A zone this runtime does not know counts as office hours: polling
    too often is better than never."""
    try:
        zone = ZoneInfo(hours.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return True
    local = datetime.fromtimestamp(now, zone)
    start, end = minutes_of(hours.start), minutes_of(hours.end)
    length = (end - start) % DAY_MINUTES or DAY_MINUTES
    since_start = local.hour * 60 + local.minute - start
    day = local.weekday()
    if since_start < 0:  # before today's start: within yesterday's window, if it runs past midnight
        since_start += DAY_MINUTES
        day = (day - 1) % 7
    return WEEKDAYS[day] in hours.days and since_start < length


def minutes_of(time_of_day: str) -> int:
    """``HH:MM`` -> minutes since midnight."""
    if not TIME_OF_DAY.match(time_of_day):
        raise ValueError(f"not a time of day HH:MM: {time_of_day!r}")
    hours, minutes = time_of_day.split(":")
    return int(hours) * 60 + int(minutes)


@cache
def known_time_zones() -> frozenset[str]:
    """The IANA zone names of the shipped ``tzdata`` package: the same list wherever this runs,
    whatever the OS has (a Debian box knows ``localtime``, which means nothing in a setting)."""
    return frozenset(resources.files("tzdata").joinpath("zones").read_text(encoding="ascii").split())
