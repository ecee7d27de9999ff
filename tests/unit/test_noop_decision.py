"""Whether a sync job has work before it takes the account's lease (``planner.jobs.stored_work``,
``planner.folders.checkpoint_work`` and ``status_work``): a job without work writes nothing.

Plain data in, assertions out: no server, no moto.
"""

from __future__ import annotations

from typing import Any

import pytest

from mailsync.sync.planner import folders, jobs
from mailsync.sync.planner.folders import Checkpoint, FirstSync, FolderCheckpoint, ServerStatus

HOUR = 3600
NOW = 1_800_000_000.0
MAPPED = {"INBOX": "inbox", "Sent": "sent"}


def synced(**changes: Any) -> FolderCheckpoint:
    base = FolderCheckpoint(uidvalidity=7, uidnext=101, highestmodseq=500, messages=100, crm_folder="inbox")
    return FolderCheckpoint(**{**base.__dict__, **changes})


def checkpoint(
    inbox: FolderCheckpoint | None = None, sent: FolderCheckpoint | None = None, **changes: Any
) -> Checkpoint:
    folders_ = {"INBOX": inbox or synced(), "Sent": sent or synced(crm_folder="sent")}
    return Checkpoint(folders=folders_, **{"last_sweep_at": int(NOW) - 60, **changes})


def status(**changes: Any) -> ServerStatus:
    return ServerStatus(**{"uidvalidity": 7, "uidnext": 101, "messages": 100, "highestmodseq": 500, **changes})


def stored(**changes: Any) -> str | None:
    facts: dict[str, Any] = {
        "reason": "schedule",
        "account_status": "ok",
        "next_sync_at": 0,
        "sync_state": "idle",
        "failures": 0,
        "last_error": None,
        "ops_pending": 0,
    }
    return jobs.stored_work(**{**facts, **changes})


def on_server(point: Checkpoint, statuses: dict[str, ServerStatus | None], **kw: Any) -> str | None:
    return folders.status_work(
        point, statuses, now=kw.get("now", NOW), scan_every=kw.get("scan_every", 0), has_copies=lambda name: True
    )


# --- what the stored state alone decides ----------------------------------------------------------


def test_a_healthy_idle_account_needs_the_servers_status_to_decide() -> None:
    assert stored() is None
    assert stored(reason="push") is None  # a CRM change enqueues it; ops_pending shows the work


def test_a_sync_the_user_asked_for_always_confirms_itself() -> None:
    assert stored(reason="user") == "requested"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"ops_pending": 1}, "crm_changes"),
        ({"reason": "continue"}, "continuation"),
        ({"sync_state": "never"}, "state_never"),
        ({"sync_state": "syncing"}, "state_syncing"),  # a first sync going on, or another worker now
        ({"sync_state": "failed", "failures": 2}, "state_failed"),
        ({"failures": 1}, "failure_to_clear"),
        ({"last_error": "The last sync stopped unexpectedly"}, "failure_to_clear"),
        ({"account_status": "pending"}, "status_to_record"),
        ({"account_status": "connect_failed"}, "status_to_record"),
        ({"next_sync_at": 1_800_000_600}, "status_to_record"),  # back from a backoff
    ],
)
def test_anything_the_job_must_write_or_clear_is_work(changes: dict[str, Any], why: str) -> None:
    assert stored(**changes) == why


# --- what the checkpoint alone decides -----------------------------------------------------------------


def test_an_up_to_date_checkpoint_leaves_it_to_the_status() -> None:
    assert folders.checkpoint_work(checkpoint(), MAPPED, now=NOW, sweep_interval=HOUR) is None


@pytest.mark.parametrize(
    ("point", "mapped", "why"),
    [
        (checkpoint(), {"INBOX": "inbox"}, "folder_unmapped"),  # Sent's messages are detached
        (checkpoint(), {**MAPPED, "Archive": "archive"}, "first_sync"),  # a newly mapped folder
        (checkpoint(inbox=synced(first_sync=FirstSync(7, 101, 500, 100, total=10, done=4))), MAPPED, "first_sync"),
        (checkpoint(), {"INBOX": "inbox", "Sent": "archive"}, "folder_remapped"),
        (checkpoint(last_sweep_at=int(NOW) - HOUR), MAPPED, "sweep_due"),
        (checkpoint(last_sweep_at=None), MAPPED, "sweep_due"),
    ],
)
def test_the_checkpoint_shows_work_without_the_server(point: Checkpoint, mapped: dict[str, str], why: str) -> None:
    assert folders.checkpoint_work(point, mapped, now=NOW, sweep_interval=HOUR) == why


# --- what the folders' STATUS decides ------------------------------------------------------------------


def test_unchanged_status_everywhere_is_a_no_op() -> None:
    assert on_server(checkpoint(), {"INBOX": status(), "Sent": status()}) is None


@pytest.mark.parametrize(
    ("inbox", "why"),
    [
        (status(uidnext=102, messages=101), "folder_changed"),  # new mail
        (status(highestmodseq=501), "folder_changed"),  # a flag changed
        (status(messages=99), "folder_changed"),  # an expunge
        (status(uidvalidity=8), "folder_full"),  # the mailbox was rebuilt
    ],
)
def test_a_changed_status_is_work(inbox: ServerStatus, why: str) -> None:
    assert on_server(checkpoint(), {"INBOX": inbox, "Sent": status()}) == why


def test_a_folder_missing_on_the_server_is_work_once() -> None:
    # Newly missing: the error is recorded and announced.
    assert on_server(checkpoint(), {"INBOX": status(), "Sent": None}) == "folder_missing"
    # Still missing, already recorded: nothing to write.
    recorded = checkpoint(sent=synced(crm_folder="sent", error="folder_missing"))
    assert on_server(recorded, {"INBOX": status(), "Sent": None}) is None
    # Back again: the error is cleared.
    assert on_server(recorded, {"INBOX": status(), "Sent": status()}) == "folder_error_cleared"


def test_without_condstore_the_flag_scan_is_work_only_when_due() -> None:
    plain = synced(highestmodseq=None, scanned_at=int(NOW) - 60)
    point = checkpoint(inbox=plain)
    same = status(highestmodseq=None)
    assert on_server(point, {"INBOX": same, "Sent": status()}, scan_every=900) is None
    assert on_server(point, {"INBOX": same, "Sent": status()}, scan_every=900, now=NOW + 900) == "folder_scan"
    assert (
        on_server(
            point, {"INBOX": status(highestmodseq=None, uidnext=102, messages=101), "Sent": status()}, scan_every=900
        )
        == "folder_scan"
    )
    # An interval of 0 scans on every sync: always work.
    assert on_server(point, {"INBOX": same, "Sent": status()}, scan_every=0) == "folder_scan"


def test_an_empty_folder_whose_uidvalidity_keeps_changing_is_no_work() -> None:
    # Courier reports a new UIDVALIDITY for an empty folder on every STATUS (see empty_reset).
    point = checkpoint(inbox=synced(messages=0, uidnext=1))
    reset = {"INBOX": status(uidvalidity=99, messages=0, uidnext=1), "Sent": status()}
    assert folders.status_work(point, reset, now=NOW, scan_every=0, has_copies=lambda name: False) is None
    assert folders.status_work(point, reset, now=NOW, scan_every=0, has_copies=lambda name: True) == "folder_full"


def test_status_to_record_is_the_same_rule_before_and_after_the_sync() -> None:
    assert jobs.status_to_record(account_status="ok", next_sync_at=0) is False
    assert jobs.status_to_record(account_status="ok", next_sync_at=None) is False
    assert jobs.status_to_record(account_status="ok", next_sync_at=5) is True
    assert jobs.status_to_record(account_status="server_busy", next_sync_at=0) is True


def test_a_live_lease_of_another_worker_makes_the_job_busy_before_any_login() -> None:
    assert jobs.lease_held_elsewhere(lease_owner="w2", lease_expires=int(NOW) + 60, owner="w1", now=NOW)
    assert not jobs.lease_held_elsewhere(lease_owner="w1", lease_expires=int(NOW) + 60, owner="w1", now=NOW)
    # Expired (its worker died) or given back: the lease write would succeed.
    assert not jobs.lease_held_elsewhere(lease_owner="w2", lease_expires=int(NOW) - 1, owner="w1", now=NOW)
    assert not jobs.lease_held_elsewhere(lease_owner=None, lease_expires=None, owner="w1", now=NOW)
