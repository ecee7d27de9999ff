"""The sync decision module (``mailsync.sync.planner``): one test per conflict rule of docs/architecture.md, and
the other decisions the engine, the pusher and the job runner only carry out.

Plain data in, assertions out: no server, no moto.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from mailsync.sync.engine import SWEEP_INTERVAL_SECONDS
from mailsync.sync.planner import folders, jobs, ops
from mailsync.sync.planner.folders import Checkpoint, FirstSync, FolderCheckpoint, ServerStatus
from mailsync.sync.planner.messages import (
    Arrival,
    Known,
    Vanish,
    detach_reason,
    on_vanished,
    plan_batch,
    pull_flag_change,
    relink_view,
    split_by_uidvalidity,
    vanished_by_uids,
)
from mailsync.sync.planner.ops import Action, MessageFacts, OpFacts, decide_op

WHEN = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def known(uid: int, key: str = "mid:<a@x>", *, folder: str = "INBOX", uidvalidity: int = 7, id: str = "m1") -> Known:
    return Known(id, folder, uidvalidity, uid, (), key, WHEN)


def arrival(uid: int, key: str, *, folder: str = "Archive", uidvalidity: int = 9) -> Arrival:
    return Arrival(folder, uidvalidity, uid, (), WHEN, 100, key)


def at(folder: str = "INBOX", uidvalidity: int = 7, uid: int = 3, state: str = "synced") -> MessageFacts:
    return MessageFacts(state=state, server_folder=folder, uidvalidity=uidvalidity, uid=uid)


# --- docs/architecture.md "Conflict rules" -----------------------------------------------------


def test_rule_1_non_conflicting_changes_from_both_sides_both_apply() -> None:
    """The CRM marked it read (pending); another program flagged it: both show."""
    change = pull_flag_change(base=(), server=("\\Flagged",), crm_seen=True, crm_pending=True)
    assert change is not None
    assert change.flags == ("\\Flagged", "\\Seen") and change.seen is True
    assert change.agreed == ("\\Flagged",), "the new base is the server's flags: the CRM's \\Seen is still to push"


def test_rule_2_when_both_sides_changed_seen_the_pending_crm_operation_wins() -> None:
    """Last agreed: read. The server says unread now; the CRM's pending op says read."""
    change = pull_flag_change(base=("\\Seen",), server=(), crm_seen=True, crm_pending=True)
    assert change is not None and change.seen is True and "\\Seen" in change.flags
    # Without a pending CRM change the server's side is simply taken.
    plain = pull_flag_change(base=("\\Seen",), server=(), crm_seen=True, crm_pending=False)
    assert plain is not None and plain.seen is False and plain.flags == ()
    # And a relinked message with a waiting op keeps the CRM's \Seen too.
    view = relink_view(
        server_crm_folder="archive",
        server_flags=(),
        crm_folder="inbox",
        crm_seen=True,
        ops_pending=True,
        move_pending=False,
    )
    assert view.seen is True


def test_rule_3_a_pending_move_of_a_message_the_server_moved_runs_from_where_it_is_now() -> None:
    # The pull relinks the message: its CRM folder stays the user's wish while the move waits.
    view = relink_view(
        server_crm_folder="archive",
        server_flags=(),
        crm_folder="trash",
        crm_seen=False,
        ops_pending=True,
        move_pending=True,
    )
    assert view.folder == "trash"
    # The op then runs from the new place (same id, new folder and UID).
    moved = at(folder="Archive", uidvalidity=9, uid=41)
    decision = decide_op(OpFacts("move", "Trash"), moved, append_waiting=False, folder_uidvalidity=9)
    assert decision.action is Action.MOVE
    # Where the server already put it where the CRM wants it, nothing is left to do.
    there = decide_op(OpFacts("move", "Archive"), moved, append_waiting=False)
    assert there.action is Action.ALREADY_THERE


def test_rule_4_a_pending_operation_on_a_removed_message_is_dropped_with_the_reason() -> None:
    decision = decide_op(OpFacts("seen", None), at(state="detached"), append_waiting=False)
    assert decision == ops.Decision(Action.FAIL, ops.DROPPED_REMOVED, "removed")


def test_rule_5_only_a_pending_move_keeps_the_crm_folder_on_a_relink() -> None:
    view = relink_view(
        server_crm_folder="archive",
        server_flags=(),
        crm_folder="inbox",
        crm_seen=True,
        ops_pending=True,
        move_pending=False,
    )
    assert view.folder == "archive", "a waiting read/unread does not freeze the folder"
    assert ops.keeps_crm_folder(move_later_in_run=False, pending_ops=1, ops_known_in_run=1) is False
    assert ops.keeps_crm_folder(move_later_in_run=True, pending_ops=1, ops_known_in_run=1) is True
    # An op recorded after the job started may be a move: the CRM's wish stays on show.
    assert ops.keeps_crm_folder(move_later_in_run=False, pending_ops=2, ops_known_in_run=1) is True


# --- operations: apply / wait / fail --------------------------------------------------------------


def test_ops_never_run_against_another_uidvalidity() -> None:
    op, message = OpFacts("seen", None), at(uidvalidity=7)
    assert decide_op(op, message, append_waiting=False).action is Action.CHECK_UIDVALIDITY
    assert decide_op(op, message, append_waiting=False, folder_uidvalidity=7).action is Action.SEEN
    assert decide_op(op, message, append_waiting=False, folder_uidvalidity=8).action is Action.WAIT
    failed = decide_op(op, message, append_waiting=False, folder_uidvalidity=8, last_chance=True)
    assert (failed.action, failed.code) == (Action.FAIL, "uidvalidity_changed")


def test_an_op_on_a_message_not_yet_appended_waits_for_its_append_else_fails() -> None:
    unsent = MessageFacts(state="synced", server_folder="Sent", uidvalidity=None, uid=None, last_op_error="over quota")
    assert decide_op(OpFacts("seen", None), unsent, append_waiting=True).action is Action.WAIT
    failed = decide_op(OpFacts("seen", None), unsent, append_waiting=False)
    assert (failed.action, failed.reason, failed.code) == (Action.FAIL, "over quota", "not_on_server")
    assert decide_op(OpFacts("append", None), unsent, append_waiting=True).action is Action.APPEND


def test_a_move_to_an_unmapped_folder_fails_and_a_vanished_message_completes_its_op() -> None:
    assert decide_op(OpFacts("move", None), at(), append_waiting=False).code == "unmapped"
    assert decide_op(OpFacts("seen", None), None, append_waiting=False).action is Action.DONE


def test_transient_failures_fail_the_op_only_after_the_attempts_run_out() -> None:
    assert [ops.after_transient_failure(n) for n in range(1, ops.OP_ATTEMPTS + 1)] == [False] * 4 + [True]


def test_an_existing_copy_is_the_newest_that_no_other_message_owns() -> None:
    assert ops.existing_copy([4, 9, 7], taken={9}) == 7
    assert ops.existing_copy([4], taken={4}) is None


def test_a_failed_op_shows_the_servers_truth_again() -> None:
    seen = ops.failed_op_view("seen", message_synced=True, seen_later=False, keeps_folder=False, agreed=["\\Flagged"])
    assert (seen.flags, seen.seen, seen.show_server_folder) == (("\\Flagged",), False, False)
    # A later seen op of the same message keeps the CRM's wish on show.
    later = ops.failed_op_view("seen", message_synced=True, seen_later=True, keeps_folder=False, agreed=[])
    assert later.flags is None
    move = ops.failed_op_view("move", message_synced=True, seen_later=False, keeps_folder=False, agreed=None)
    assert move.show_server_folder is True
    assert ops.failed_op_view("move", message_synced=False, seen_later=False, keeps_folder=False, agreed=None) == (
        ops.FailedView()
    )


# --- messages: vanished, relinks, creates ----------------------------------------------------------


def test_a_uidvalidity_change_counts_every_old_copy_as_vanished() -> None:
    current, stale = split_by_uidvalidity([known(1, uidvalidity=7), known(2, uidvalidity=8)], 8)
    assert list(current) == [2] and [k.uidvalidity for k in stale] == [7]


def test_a_resumed_first_sync_notices_what_left_meanwhile() -> None:
    gone = vanished_by_uids({1: known(1), 2: known(2)}, server_uids={2})
    assert [k.uid for k in gone] == [1]


def test_a_move_between_mapped_folders_keeps_the_id_and_fetches_no_body() -> None:
    step = plan_batch([arrival(5, "mid:<a@x>")], [known(3, "mid:<a@x>", id="keep")], {}, {}, fetched=set())
    assert [(r.id, r.arrival.uid) for r in step.relinks] == [("keep", 5)]
    assert step.creates == [] and step.fetch == [] and step.vanished == []


def test_a_crm_written_message_the_server_saved_itself_is_linked_before_a_detached_one() -> None:
    step = plan_batch(
        [arrival(5, "mid:<s@x>")], [], detached={"mid:<s@x>": ["old"]}, revivable={"mid:<s@x>": ["sent"]}, fetched=set()
    )
    assert [r.id for r in step.relinks] == ["sent"]
    assert step.revivable == {"mid:<s@x>": []}


def test_new_messages_are_created_and_only_missing_bodies_fetched() -> None:
    step = plan_batch([arrival(5, "sha:abc"), arrival(6, "mid:<n@x>")], [], {}, {}, fetched={5})
    assert [a.uid for a in step.creates] == [5, 6] and step.fetch == [6]


def test_only_the_copy_a_message_is_at_detaches_it() -> None:
    copy = known(3)
    assert on_vanished(copy, "synced", ("INBOX", 7, 3)) is Vanish.DETACH
    assert on_vanished(copy, "synced", ("Archive", 9, 1)) is Vanish.DROP_LOCATION, "a rerun after a move"
    assert on_vanished(copy, "detached", ("INBOX", 7, 3)) is Vanish.DROP_LOCATION
    assert on_vanished(copy, None, None) is Vanish.DROP_LOCATION


def test_moved_to_an_unmapped_folder_or_removed() -> None:
    assert detach_reason(known(3, "mid:<a@x>"), {"mid:<a@x>"}) == "moved_unmapped"
    assert detach_reason(known(3, "mid:<b@x>"), {"mid:<a@x>"}) == "removed"


# --- folders and the checkpoint ---------------------------------------------------------------------


def test_condstore_without_qresync_compares_uids_only_when_the_count_says_something_went() -> None:
    assert folders.expunges_unreported(snapshot_messages=10, stored_messages=9, new_arrivals=1) is False
    assert folders.expunges_unreported(snapshot_messages=9, stored_messages=9, new_arrivals=1) is True


def test_disappearances_wait_one_sync_only_and_ask_the_server_only_when_it_matters() -> None:
    asked: list[bool] = []

    def changed() -> bool:
        asked.append(True)
        return True

    assert folders.disappearances_wait(deferred_before=False, changed_since_snapshot=changed) is True
    assert folders.disappearances_wait(deferred_before=True, changed_since_snapshot=changed) is False
    assert len(asked) == 1


def test_arrivals_are_bounded_by_the_snapshot_that_describes_the_folder_read_now() -> None:
    listed, live = ServerStatus(7, 50, 40, None), ServerStatus(7, 52, 41, None)
    assert folders.snapshot_bound(listed, live) is listed
    assert folders.snapshot_bound(ServerStatus(6, 50, 40, None), live) is live, "UIDVALIDITY changed in between"


def test_a_first_sync_resumes_under_the_same_uidvalidity_and_restarts_after_a_reset() -> None:
    first = FirstSync(uidvalidity=7, uidnext=50, highestmodseq=None, messages=40, total=40, done=10, cursor=30)
    bound = ServerStatus(7, 60, 45, None)
    assert folders.first_sync_start(first, 7, bound) is first
    restarted = folders.first_sync_start(first, 8, ServerStatus(8, 60, 45, None))
    assert (restarted.uidvalidity, restarted.uidnext, restarted.done) == (8, 60, 0)
    # It advances to what it saw when it began; later changes are next sync's.
    assert folders.advanced(bound, first) == ServerStatus(7, 50, 40, None)
    assert folders.advanced(bound, None) == bound


def test_the_checkpoint_round_trips_through_storage_numbers() -> None:
    stored = {
        "folders": {
            "INBOX": {"uidvalidity": Decimal(7), "uidnext": Decimal(50), "crm_folder": "inbox", "deferred": True},
            "Gone": {"error": "folder_missing", "crm_folder": "archive"},
        },
        "has_detached": True,
        "last_sweep_at": Decimal(1700000000),
    }
    checkpoint = Checkpoint.from_dict(stored)
    assert checkpoint.folder("INBOX") == FolderCheckpoint(uidvalidity=7, uidnext=50, deferred=True, crm_folder="inbox")
    assert Checkpoint.from_dict(checkpoint.to_dict()) == checkpoint
    assert checkpoint.with_folder("INBOX", deferred=False).folder("INBOX").deferred is False
    assert "Gone" not in checkpoint.without_folder("Gone").folders


def test_the_aged_out_sweep_runs_daily_or_after_a_full_resync() -> None:
    day, now = SWEEP_INTERVAL_SECONDS, 1_800_000_000
    assert day == 86_400
    assert folders.sweep_due(None, now, force=False, interval=day) is True
    assert folders.sweep_due(now - day + 1, now, force=False, interval=day) is False
    assert folders.sweep_due(now - day, now, force=False, interval=day) is True
    assert folders.sweep_due(now - 1, now, force=True, interval=day) is True


# --- jobs ----------------------------------------------------------------------------------------------


def test_who_is_synced_at_all() -> None:
    assert jobs.may_sync(fetch_enabled=True, status="ok", protocol="imap") is True
    assert jobs.may_sync(fetch_enabled=True, status="auth_failed", protocol="imap") is False
    assert jobs.may_sync(fetch_enabled=False, status="ok", protocol="imap") is False
    assert jobs.may_sync(fetch_enabled=True, status="ok", protocol="pop3") is True
    assert jobs.may_sync(fetch_enabled=True, status="ok", protocol="smtp") is False


def test_a_scheduled_job_right_after_a_success_is_a_duplicate_but_a_users_never_is() -> None:
    assert jobs.duplicate_scheduled_job("schedule", 5) is True
    assert jobs.duplicate_scheduled_job("user", 5) is False
    assert jobs.duplicate_scheduled_job("schedule", None) is False
    assert jobs.duplicate_scheduled_job("schedule", jobs.MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS) is False


def test_a_job_without_room_for_its_budget_is_deferred_unless_it_is_the_first() -> None:
    assert jobs.defer_job(may_defer=True, lambda_left=100, budget_seconds=120) is True
    assert jobs.defer_job(may_defer=False, lambda_left=100, budget_seconds=120) is False
    assert jobs.defer_job(may_defer=True, lambda_left=None, budget_seconds=120) is False
    assert jobs.defer_job(may_defer=True, lambda_left=131, budget_seconds=120) is False


@pytest.mark.parametrize(
    ("code", "retried"),
    [
        ("connect_failed", True),
        ("timeout", True),
        ("auth_failed", False),
        ("tls_failed", False),
        ("server_busy", False),
        ("server_misbehaving", False),
        ("protocol_mismatch", False),
    ],
)
def test_which_failures_are_retried_within_the_job(code: str, retried: bool) -> None:
    assert jobs.retry_in_job(code, 1, out_of_time=False) is retried
    assert jobs.retry_in_job(code, jobs.CONNECT_ATTEMPTS, out_of_time=False) is False
    assert jobs.retry_in_job(code, 1, out_of_time=True) is False


def test_a_wrong_password_leaves_the_schedule_and_a_certificate_failure_backs_off_long() -> None:
    auth = jobs.mailbox_failure("auth_failed", "Login failed", failures_before=0)
    assert (auth.stays_due, auth.status, auth.sync_state["failures"]) == (False, "auth_failed", 1)
    tls = jobs.mailbox_failure("tls_failed", "bad certificate", failures_before=2)
    assert (tls.stays_due, tls.backoff_base, tls.sync_state["failures"]) == (True, 600, 3)
    internal = jobs.internal_failure(0)
    assert internal.sync_state == {"state": "failed", "last_error": jobs.INTERNAL_ERROR, "failures": 1}


def test_an_incomplete_sync_stays_syncing_and_a_complete_one_clears_the_error() -> None:
    assert jobs.finished_state(complete=True) == {"state": "idle", "last_error": None, "failures": 0}
    assert jobs.finished_state(complete=False)["state"] == "syncing"


# --- servers without CONDSTORE: the flag scan interval -----------------------------------------------


def scanned(at: int | None) -> FolderCheckpoint:
    return FolderCheckpoint(uidvalidity=7, uidnext=50, messages=40, scanned_at=at)


def test_without_condstore_an_unchanged_folder_is_scanned_only_every_interval() -> None:
    same = ServerStatus(7, 50, 40, None)
    assert folders.plan_folder(scanned(1000), same, qresync=False, now=1000 + 899, scan_every=900).name == "SKIP"
    assert folders.plan_folder(scanned(1000), same, qresync=False, now=1000 + 900, scan_every=900).name == "SCAN"


def test_without_condstore_new_mail_or_an_expunge_is_scanned_at_once() -> None:
    for changed in (ServerStatus(7, 51, 41, None), ServerStatus(7, 50, 39, None)):
        assert folders.plan_folder(scanned(1000), changed, qresync=False, now=1001, scan_every=900).name == "SCAN"


def test_without_a_scan_on_record_or_an_interval_the_folder_is_scanned() -> None:
    same = ServerStatus(7, 50, 40, None)
    assert folders.scan_due(scanned(None), same, now=1001, scan_every=900) is True
    assert folders.scan_due(scanned(1000), same, now=1001, scan_every=0) is True
