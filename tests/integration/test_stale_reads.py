"""A scheduled job reads its account eventually consistent, or with its group ahead of time: the
read can predate a settings change. Once such a job has work, the lease checks the account
against a consistent read, so nothing is ever done with settings the user already changed or
deleted (real Dovecot pop3 and imap, moto for AWS). And a job keeps its work slot across connect
retries: a retry after the lease never leaves the account "syncing" for want of a slot."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime

import pytest

from tests.conftest import ApiCall
from tests.integration.pop3_support import SETTINGS, Clock, deliver, on_server, pop_account


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch, datetime.now(UTC).replace(microsecond=0))


def read_now(user_id: str):
    from mailsync import dal

    return dal.get_account_and_sync_state("acme", user_id)


def test_a_pop3_job_read_before_keep_copy_was_turned_on_deletes_nothing(
    api: ApiCall, local_mail_env, mail_user, clock: Clock
) -> None:
    from mailsync import dal

    deliver(mail_user, "cv", days=1)
    account = pop_account(api, mail_user, keep_copy=False)
    stale = read_now(account.caller.user)  # the job's read: keep_copy false
    saved = api("PUT", SETTINGS, {**account.settings_body(), "keep_copy": True}, caller=account.caller)
    assert saved.status == 200, saved.body

    result = account.sync(reason="schedule", read=stale)

    assert result.status == "busy"  # runs again on a fresh read
    assert on_server(mail_user) == ["cv"], "deleted with the setting the user had already turned off"
    assert account.synced() == {}
    state = dal.get_sync_state("acme", account.caller.user)
    assert state is None or (state.state != "syncing" and state.lease_owner is None)
    # The next job reads the settings as they are now: stored, and kept on the server.
    assert account.sync(reason="schedule").status == "synced"
    assert sorted(account.by_subject()) == ["cv"] and on_server(mail_user) == ["cv"]


def test_a_job_read_before_the_settings_were_deleted_stores_nothing(
    api: ApiCall, local_mail_env, mail_user, clock: Clock
) -> None:
    from mailsync import dal

    deliver(mail_user, "after the goodbye", days=1)
    account = pop_account(api, mail_user)
    stale = read_now(account.caller.user)
    assert api("DELETE", SETTINGS, caller=account.caller).status == 204

    result = account.sync(reason="schedule", read=stale)

    assert result.status == "busy"
    assert account.synced() == {}
    state = dal.get_sync_state("acme", account.caller.user)
    assert state is None or state.folders == {} or not state.folders
    assert account.sync(reason="schedule").status == "gone"


def test_an_unchanged_stale_read_syncs_as_usual(api: ApiCall, local_mail_env, mail_user, clock: Clock) -> None:
    deliver(mail_user, "hello", days=1)
    account = pop_account(api, mail_user)
    stale = read_now(account.caller.user)
    assert account.sync(reason="schedule", read=stale).status == "synced"
    assert sorted(account.by_subject()) == ["hello"]


def test_a_connect_retry_after_the_lease_keeps_its_work_slot(
    api: ApiCall, local_mail_env, mail_user, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync import dal
    from mailsync.errors import MailTimeout
    from mailsync.services import sync_jobs
    from mailsync.sync.planner import jobs as policy

    deliver(mail_user, "retried", days=1)
    account = pop_account(api, mail_user)
    # One slot in the process; the first try drops mid-sync, after the lease was taken, and
    # another job of the process waits for the slot meanwhile.
    slots = threading.BoundedSemaphore(1)
    monkeypatch.setattr(sync_jobs, "_WORK_SLOTS", slots)
    monkeypatch.setattr(sync_jobs, "HOST_WAIT_SECONDS", 0.5)
    monkeypatch.setattr(policy, "retry_delay", lambda attempt: 0)
    job_done = threading.Event()

    def another_job() -> None:
        with slots:  # holds the slot from the moment it gets it until this job has finished
            job_done.wait(timeout=60)

    other = threading.Thread(target=another_job)
    real, tries = sync_jobs.sync_pop3, []

    def sync_pop3(*args, **kwargs):
        tries.append(1)
        if len(tries) == 1:
            kwargs["take_lease"]()
            other.start()
            raise MailTimeout("connection dropped mid-sync")
        return real(*args, **kwargs)

    monkeypatch.setattr(sync_jobs, "sync_pop3", sync_pop3)
    try:
        result = account.sync(reason="user")
    finally:
        job_done.set()
        other.join(timeout=60)

    assert result.status == "synced", result
    assert len(tries) == 2
    assert sorted(account.by_subject()) == ["retried"]
    state = dal.get_sync_state("acme", account.caller.user)
    assert state is not None and state.state != "syncing" and state.lease_owner is None
    assert slots.acquire(blocking=False), "every slot was given back"


def test_settings_changed_compares_what_a_sync_acts_on() -> None:
    from mailsync.domain import Account
    from mailsync.sync.planner.jobs import settings_changed

    read = Account(tenant_id="t", user_id="u", host="h", port=995, username="n", security="ssl")
    assert not settings_changed(read, dataclasses.replace(read, next_sync_at=5, last_activity_at=9))
    assert settings_changed(read, None)
    for change in ({"keep_copy": False}, {"incoming_confidential": True}, {"folder_map": {"inbox": "INBOX"}}):
        assert settings_changed(read, dataclasses.replace(read, **change)), change


def test_a_stale_read_never_takes_a_repaired_mailbox_out_of_the_schedule(
    api: ApiCall, local_mail_env, mail_user, clock: Clock
) -> None:
    from mailsync import dal

    account = pop_account(api, mail_user)
    stored, state = read_now(account.caller.user)
    assert stored is not None and stored.due_shard is not None
    # Read while fetching was off; the user has turned it on since.
    stale = (dataclasses.replace(stored, fetch_enabled=False), state)

    assert account.sync(reason="schedule", read=stale).status == "busy"  # again, on a fresh read
    now = dal.get_account("acme", account.caller.user)
    assert now is not None and now.due_shard is not None and now.next_sync_at is not None


def test_a_prefetched_read_is_used_only_while_it_is_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsync import dal
    from mailsync.services import sync_groups
    from mailsync.services.sync_jobs import SyncJob

    jobs = [SyncJob(tenant_id="acme", user_id=f"u{i}", reason="schedule") for i in range(3)]
    monkeypatch.setattr(dal, "get_accounts_and_sync_states", lambda keys, consistent: {k: ("read", None) for k in keys})
    now = [100.0]
    monkeypatch.setattr(sync_groups.time, "monotonic", lambda: now[0])
    work = sync_groups._Work(jobs, None, 30)
    assert work.read_for(0) == ("read", None)  # read together with jobs 1 and 2
    now[0] += sync_groups.PREFETCH_MAX_AGE_SECONDS / 2
    assert work.read_for(1) == ("read", None)
    now[0] += sync_groups.PREFETCH_MAX_AGE_SECONDS
    assert work.read_for(2) is None  # too old by now: the job reads its own
