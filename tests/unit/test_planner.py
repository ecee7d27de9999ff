"""The pure sync planner: folder modes, reconciliation of moves, flag merging, ids and batching.

Plain data in, assertions out: no AWS, no network, no IMAP.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from mailsync.sync.planner.folders import FirstSync, FolderCheckpoint, Mode, ServerStatus, moved_on, plan_folder
from mailsync.sync.planner.messages import (
    Arrival,
    Known,
    batches,
    id_for_new_copy,
    match_key,
    reconcile,
    server_flags_changed,
)

WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def synced(*, uidvalidity: int = 100, uidnext: int = 50, highestmodseq: int | None = 900, messages: int = 40):
    return FolderCheckpoint(uidvalidity=uidvalidity, uidnext=uidnext, highestmodseq=highestmodseq, messages=messages)


def status(*, uidvalidity: int = 100, uidnext: int = 50, highestmodseq: int | None = 900, messages: int = 40):
    return ServerStatus(uidvalidity=uidvalidity, uidnext=uidnext, messages=messages, highestmodseq=highestmodseq)


def known(uid: int, key: str, *, folder: str = "INBOX", uidvalidity: int = 100, id: str | None = None) -> Known:
    return Known(
        id=id or f"id-{folder}-{uidvalidity}-{uid}",
        server_folder=folder,
        uidvalidity=uidvalidity,
        uid=uid,
        flags=("\\Seen",),
        match_key=key,
        internal_date=WHEN,
    )


def arrival(uid: int, key: str, *, folder: str = "INBOX", uidvalidity: int = 100) -> Arrival:
    return Arrival(
        server_folder=folder,
        uidvalidity=uidvalidity,
        uid=uid,
        flags=(),
        internal_date=WHEN,
        size=1000,
        match_key=key,
    )


# --- plan_folder -------------------------------------------------------------------------------


def test_given_a_folder_never_synced_when_planned_then_full() -> None:
    assert plan_folder(FolderCheckpoint(), status(), qresync=True) is Mode.FULL


def test_given_uidvalidity_changed_when_planned_then_full() -> None:
    assert plan_folder(synced(uidvalidity=100), status(uidvalidity=101), qresync=True) is Mode.FULL


def test_given_first_sync_still_in_progress_when_planned_then_full_even_if_status_unchanged() -> None:
    stored = FolderCheckpoint(
        uidvalidity=100,
        uidnext=50,
        highestmodseq=900,
        messages=40,
        first_sync=FirstSync(uidvalidity=100, uidnext=50, highestmodseq=900, messages=40, total=40, done=10, cursor=30),
    )
    assert plan_folder(stored, status(), qresync=True) is Mode.FULL


@pytest.mark.parametrize("qresync", [True, False])
def test_given_uidnext_modseq_and_count_unchanged_when_planned_then_skip(qresync: bool) -> None:
    assert plan_folder(synced(), status(), qresync=qresync) is Mode.SKIP


@pytest.mark.parametrize(
    "changed",
    [
        {"uidnext": 51},  # new mail
        {"highestmodseq": 901},  # flag change
        {"messages": 39},  # expunge
    ],
)
def test_given_something_changed_when_server_has_qresync_then_qresync(changed: dict[str, int]) -> None:
    assert plan_folder(synced(), status(**changed), qresync=True) is Mode.QRESYNC


@pytest.mark.parametrize("changed", [{"uidnext": 51}, {"highestmodseq": 901}, {"messages": 39}])
def test_given_something_changed_when_server_lacks_qresync_then_condstore(changed: dict[str, int]) -> None:
    assert plan_folder(synced(), status(**changed), qresync=False) is Mode.CONDSTORE


@pytest.mark.parametrize(
    ("stored_modseq", "server_modseq"),
    [(None, None), (None, 900), (900, None)],
    ids=["neither-side", "stored-missing", "server-missing"],
)
@pytest.mark.parametrize("qresync", [True, False])
def test_given_no_highestmodseq_when_nothing_visible_changed_then_still_scan(
    stored_modseq: int | None, server_modseq: int | None, qresync: bool
) -> None:
    # Flag changes are invisible in STATUS without HIGHESTMODSEQ, so "unchanged" proves nothing.
    stored = synced(highestmodseq=stored_modseq)
    assert plan_folder(stored, status(highestmodseq=server_modseq), qresync=qresync) is Mode.SCAN


def test_given_no_highestmodseq_when_new_mail_arrived_then_scan() -> None:
    stored = synced(highestmodseq=None)
    assert plan_folder(stored, status(highestmodseq=None, uidnext=60, messages=45), qresync=False) is Mode.SCAN


# A folder that never held a message on Courier-IMAP 5.0 reports a new UIDVALIDITY every second.
EMPTY = {"uidnext": 1, "highestmodseq": None, "messages": 0}


@pytest.mark.parametrize("qresync", [True, False])
def test_given_empty_folder_with_nothing_stored_when_uidvalidity_changes_then_skip(qresync: bool) -> None:
    asked: list[bool] = []

    def has_copies() -> bool:
        asked.append(True)
        return False

    stored = synced(uidvalidity=796144037, **EMPTY)
    mode = plan_folder(stored, status(uidvalidity=796144038, **EMPTY), qresync=qresync, has_copies=has_copies)
    assert (mode, asked) == (Mode.SKIP, [True])


def test_given_empty_folder_with_a_stored_copy_when_uidvalidity_changes_then_full() -> None:
    # A copy stored from it (e.g. appended by the CRM, then deleted elsewhere) must still be detached.
    stored = synced(uidvalidity=100, **EMPTY)
    assert plan_folder(stored, status(uidvalidity=101, **EMPTY), qresync=False, has_copies=lambda: True) is Mode.FULL


@pytest.mark.parametrize(
    ("stored", "server"),
    [
        (synced(uidvalidity=100, **EMPTY), status(uidvalidity=101, uidnext=2, messages=1, highestmodseq=None)),
        (synced(uidvalidity=100), status(uidvalidity=101, uidnext=2, messages=1)),
    ],
    ids=["first-mail-in-empty-folder", "reset-folder-with-mail"],
)
def test_given_new_uidvalidity_when_folder_has_mail_then_full_without_asking_for_copies(
    stored: FolderCheckpoint, server: ServerStatus
) -> None:
    def has_copies() -> bool:
        raise AssertionError("a folder with mail on the server is resynced whatever we store")

    assert plan_folder(stored, server, qresync=False, has_copies=has_copies) is Mode.FULL


def test_given_empty_folder_never_synced_when_planned_then_full_even_without_copies() -> None:
    assert plan_folder(FolderCheckpoint(), status(**EMPTY), qresync=False, has_copies=lambda: False) is Mode.FULL


def test_given_first_sync_in_progress_when_empty_folder_uidvalidity_changes_then_full() -> None:
    first = FirstSync(uidvalidity=100, uidnext=1, highestmodseq=None, messages=0)
    stored = FolderCheckpoint(uidvalidity=100, uidnext=1, messages=0, first_sync=first)
    assert plan_folder(stored, status(uidvalidity=101, **EMPTY), qresync=False, has_copies=lambda: False) is Mode.FULL


def test_given_only_uidvalidity_differs_on_an_empty_folder_then_not_moved_on() -> None:
    assert moved_on(status(uidvalidity=100, **EMPTY), status(uidvalidity=101, **EMPTY)) is False


@pytest.mark.parametrize(
    "after",
    [
        status(uidvalidity=101, uidnext=2, messages=1, highestmodseq=None),  # mail arrived
        status(uidvalidity=101, uidnext=2, messages=0, highestmodseq=None),  # came and went
        status(uidvalidity=100, uidnext=1, messages=0, highestmodseq=5),  # modseq moved
    ],
    ids=["arrival", "came-and-went", "modseq"],
)
def test_given_an_empty_folder_when_more_than_uidvalidity_changes_then_moved_on(after: ServerStatus) -> None:
    assert moved_on(status(uidvalidity=100, **EMPTY), after) is True


@pytest.mark.parametrize(
    "after",
    [status(uidvalidity=101), status(uidnext=51), status(messages=39), status(highestmodseq=901)],
    ids=["uidvalidity", "uidnext", "messages", "modseq"],
)
def test_given_a_folder_with_mail_when_anything_changes_then_moved_on(after: ServerStatus) -> None:
    assert moved_on(status(), after) is True
    assert moved_on(status(), status()) is False


# --- FolderCheckpoint / FirstSync serialisation -------------------------------------------------------


def test_given_first_sync_with_every_field_when_round_tripped_then_equal() -> None:
    first = FirstSync(uidvalidity=7, uidnext=500, highestmodseq=12345, messages=480, total=480, done=200, cursor=301)
    assert FirstSync.from_dict(first.to_dict()) == first


def test_given_first_sync_without_optionals_when_serialised_then_nones_omitted_and_round_trip() -> None:
    first = FirstSync(uidvalidity=7, uidnext=500, highestmodseq=None, messages=480)
    data = first.to_dict()
    assert "highestmodseq" not in data
    assert "cursor" not in data
    assert FirstSync.from_dict(data) == first


def test_given_zero_highestmodseq_and_cursor_when_round_tripped_then_zeros_kept() -> None:
    first = FirstSync(uidvalidity=7, uidnext=1, highestmodseq=0, messages=0, cursor=0)
    assert FirstSync.from_dict(first.to_dict()) == first


def test_given_full_folder_state_with_first_sync_when_round_tripped_then_equal() -> None:
    state = FolderCheckpoint(
        uidvalidity=7,
        uidnext=500,
        highestmodseq=12345,
        messages=480,
        first_sync=FirstSync(uidvalidity=8, uidnext=20, highestmodseq=None, messages=19, total=19, done=5, cursor=15),
    )
    data = state.to_dict()
    assert isinstance(data["first_sync"], dict)
    assert FolderCheckpoint.from_dict(data) == state


def test_given_state_without_modseq_when_round_tripped_then_equal_and_none_omitted() -> None:
    state = FolderCheckpoint(uidvalidity=7, uidnext=500, highestmodseq=None, messages=480)
    data = state.to_dict()
    assert "highestmodseq" not in data
    assert "first_sync" not in data
    assert FolderCheckpoint.from_dict(data) == state


@pytest.mark.parametrize("empty", [None, {}])
def test_given_no_stored_data_when_loaded_then_empty_state_which_plans_full(empty: dict | None) -> None:
    state = FolderCheckpoint.from_dict(empty)
    assert state == FolderCheckpoint()
    assert state.to_dict() == {}
    assert plan_folder(state, status(), qresync=True) is Mode.FULL


def test_given_dynamodb_decimals_when_loaded_then_plain_ints() -> None:
    data = {
        "uidvalidity": Decimal(7),
        "uidnext": Decimal(500),
        "highestmodseq": Decimal(12345),
        "messages": Decimal(480),
        "first_sync": {"uidvalidity": Decimal(7), "uidnext": Decimal(500), "messages": Decimal(480)},
    }
    state = FolderCheckpoint.from_dict(data)
    assert state == FolderCheckpoint(
        uidvalidity=7,
        uidnext=500,
        highestmodseq=12345,
        messages=480,
        first_sync=FirstSync(uidvalidity=7, uidnext=500, highestmodseq=None, messages=480),
    )
    assert all(type(v) is int for k, v in state.to_dict().items() if k != "first_sync")


# --- reconcile -----------------------------------------------------------------------------------


def test_given_a_move_between_two_mapped_folders_when_reconciled_then_id_kept_via_relink() -> None:
    # Given: the message left INBOX (uid 10) and appeared in Archive (uid 3) in the same sync
    old = known(10, "mid:<a@x>", folder="INBOX", id="msg-a")
    new = arrival(3, "mid:<a@x>", folder="Archive", uidvalidity=555)

    result = reconcile([new], [old])

    # Then: one relink carrying the old location; nothing created or detached
    assert len(result.relinks) == 1
    relink = result.relinks[0]
    assert relink.id == "msg-a"
    assert relink.old is old
    assert relink.arrival is new
    assert result.creates == []
    assert result.vanished == []


def test_given_uidvalidity_reset_when_every_copy_reappears_under_new_uids_then_all_relinks_ids_stable() -> None:
    # Given: INBOX had uids 1..5 under uidvalidity 100; the server renumbered everything under 200
    keys = [f"mid:<m{i}@x>" for i in range(1, 6)]
    olds = [known(uid, key, uidvalidity=100) for uid, key in zip(range(1, 6), keys, strict=True)]
    news = [arrival(uid, key, uidvalidity=200) for uid, key in zip(range(101, 106), keys, strict=True)]

    result = reconcile(news, olds)

    # Then: every new copy takes the id of its old copy, nothing is created or detached
    assert result.creates == []
    assert result.vanished == []
    assert {r.arrival.match_key: r.id for r in result.relinks} == {o.match_key: o.id for o in olds}
    assert all(r.old is not None and r.old.match_key == r.arrival.match_key for r in result.relinks)


def test_given_two_copies_with_same_message_id_when_one_vanishes_then_one_relink_other_untouched() -> None:
    # Given: mail sent to self: copies in INBOX and Sent share a Message-ID; the INBOX copy is archived.
    # The Sent copy did not vanish, so it is not among the inputs at all.
    key = "mid:<self@x>"
    inbox_copy = known(10, key, folder="INBOX", id="msg-inbox")
    sent_copy_id = "msg-sent"
    archived = arrival(4, key, folder="Archive", uidvalidity=555)

    result = reconcile([archived], [inbox_copy], detached_by_key={})

    # Then: the archived copy takes the INBOX copy's id, never the Sent copy's
    assert [(r.id, r.old) for r in result.relinks] == [("msg-inbox", inbox_copy)]
    assert sent_copy_id not in {r.id for r in result.relinks}
    assert result.creates == []
    assert result.vanished == []


def test_given_two_same_key_copies_vanish_when_only_one_reappears_then_one_relink_one_left_to_detach() -> None:
    key = "mid:<self@x>"
    first = known(10, key, folder="INBOX", id="msg-1")
    second = known(20, key, folder="INBOX", id="msg-2")

    result = reconcile([arrival(3, key, folder="Archive")], [second, first])

    # Then: each old copy is used at most once (oldest UID first); the other is still unexplained
    assert [r.id for r in result.relinks] == ["msg-1"]
    assert result.vanished == [second]
    assert result.creates == []


def test_given_two_same_key_arrivals_and_one_vanished_then_one_relink_and_one_create() -> None:
    key = "mid:<self@x>"
    gone = known(10, key, id="msg-1")
    a1, a2 = arrival(30, key, folder="Archive"), arrival(31, key, folder="Archive")

    result = reconcile([a1, a2], [gone])

    # Then: two copies stay two messages: the old id is not reused for both
    assert [(r.arrival, r.id) for r in result.relinks] == [(a1, "msg-1")]
    assert result.creates == [a2]


def test_given_a_detached_message_when_its_message_id_arrives_again_then_revived_with_no_old() -> None:
    key = "mid:<back@x>"
    back = arrival(7, key, folder="INBOX")

    result = reconcile([back], [], detached_by_key={key: ["msg-detached"]})

    assert len(result.relinks) == 1
    assert result.relinks[0].id == "msg-detached"
    assert result.relinks[0].old is None
    assert result.relinks[0].arrival is back
    assert result.creates == []
    assert result.vanished == []


def test_given_both_a_vanished_copy_and_a_detached_message_match_then_vanished_copy_preferred() -> None:
    key = "mid:<both@x>"
    gone = known(10, key, id="msg-vanished")
    back = arrival(7, key, folder="Archive")

    result = reconcile([back], [gone], detached_by_key={key: ["msg-detached"]})

    assert [(r.id, r.old) for r in result.relinks] == [("msg-vanished", gone)]
    assert result.creates == []
    assert result.vanished == []


def test_given_vanished_and_detached_match_when_two_arrive_then_vanished_first_then_revival() -> None:
    key = "mid:<both@x>"
    gone = known(10, key, id="msg-vanished")
    a1, a2 = arrival(7, key, folder="Archive"), arrival(8, key, folder="Archive")

    result = reconcile([a1, a2], [gone], detached_by_key={key: ["msg-detached"]})

    assert [(r.arrival, r.id, r.old) for r in result.relinks] == [
        (a1, "msg-vanished", gone),
        (a2, "msg-detached", None),
    ]
    assert result.creates == []


def test_given_an_arrival_without_any_match_when_reconciled_then_created() -> None:
    fresh = arrival(42, "mid:<new@x>")

    result = reconcile([fresh], [known(10, "mid:<other@x>")], detached_by_key={"mid:<third@x>": ["msg-3"]})

    assert result.creates == [fresh]
    assert result.relinks == []


def test_given_vanished_copies_without_arrivals_when_reconciled_then_reported_for_detachment() -> None:
    gone_a = known(10, "mid:<a@x>", folder="INBOX")
    gone_b = known(3, "sha:abc", folder="Sent", uidvalidity=9)

    result = reconcile([], [gone_a, gone_b])

    assert result.relinks == []
    assert result.creates == []
    assert sorted(result.vanished, key=lambda k: k.id) == sorted([gone_a, gone_b], key=lambda k: k.id)


def test_given_nothing_when_reconciled_then_empty_result() -> None:
    result = reconcile([], [], None)
    assert (result.relinks, result.creates, result.vanished) == ([], [], [])


def test_given_content_hash_key_when_message_moves_then_matched_by_content() -> None:
    key = match_key(None, "deadbeef")
    gone = known(10, key, id="msg-nomid")

    result = reconcile([arrival(2, key, folder="Archive")], [gone])

    assert [r.id for r in result.relinks] == ["msg-nomid"]


# --- match_key -----------------------------------------------------------------------------------


def test_given_a_message_id_when_keyed_then_message_id_wins_over_content() -> None:
    assert match_key("<a@x>", "deadbeef") == "mid:<a@x>"


@pytest.mark.parametrize("missing", [None, ""])
def test_given_no_message_id_when_keyed_then_content_hash(missing: str | None) -> None:
    assert match_key(missing, "deadbeef") == "sha:deadbeef"


def test_given_a_message_id_equal_to_a_hash_when_keyed_then_namespaces_do_not_collide() -> None:
    assert match_key("deadbeef", "x") != match_key(None, "deadbeef")


# --- server_flags_changed --------------------------------------------------------------------------


def test_given_same_flags_in_another_order_when_merged_then_no_change() -> None:
    assert server_flags_changed(["\\Seen", "\\Flagged"], ("\\Flagged", "\\Seen")) is None


def test_given_only_recent_differs_when_merged_then_no_change() -> None:
    assert server_flags_changed(["\\Seen"], ["\\Seen", "\\Recent"]) is None
    assert server_flags_changed(["\\Seen", "\\Recent"], ["\\Seen"]) is None


def test_given_a_flag_added_when_merged_then_sorted_flags_without_recent() -> None:
    assert server_flags_changed(["\\Seen"], ["\\Recent", "\\Seen", "\\Answered"]) == ("\\Answered", "\\Seen")


def test_given_all_flags_removed_when_merged_then_empty_tuple_not_none() -> None:
    assert server_flags_changed(["\\Seen"], []) == ()


def test_given_duplicates_from_server_when_merged_then_deduplicated() -> None:
    assert server_flags_changed([], ["$Label1", "\\Seen", "$Label1"]) == ("$Label1", "\\Seen")


# --- id_for_new_copy ------------------------------------------------------------------------------


def test_given_same_location_when_id_derived_twice_then_same_id() -> None:
    assert id_for_new_copy("t1", "u1", "INBOX", 100, 7) == id_for_new_copy("t1", "u1", "INBOX", 100, 7)


@pytest.mark.parametrize(
    "other",
    [
        ("t2", "u1", "INBOX", 100, 7),
        ("t1", "u2", "INBOX", 100, 7),
        ("t1", "u1", "Sent", 100, 7),
        ("t1", "u1", "INBOX", 101, 7),
        ("t1", "u1", "INBOX", 100, 8),
    ],
    ids=["tenant", "user", "folder", "uidvalidity", "uid"],
)
def test_given_any_part_of_location_differs_when_id_derived_then_different(other: tuple) -> None:
    assert id_for_new_copy("t1", "u1", "INBOX", 100, 7) != id_for_new_copy(*other)


def test_given_parts_that_would_concatenate_alike_when_id_derived_then_still_different() -> None:
    # "INBOX" + uidvalidity 11 + uid 2 must not collide with "INBOX" + 1 + 12
    assert id_for_new_copy("t", "u", "INBOX", 11, 2) != id_for_new_copy("t", "u", "INBOX", 1, 12)
    assert id_for_new_copy("ab", "c", "F", 1, 1) != id_for_new_copy("a", "bc", "F", 1, 1)


@pytest.mark.parametrize("folder", ["INBOX", "Verzonden items", "[Gmail]/Alle berichten", "Ünïcødé/📁"])
def test_given_any_folder_name_when_id_derived_then_url_safe_lower_case(folder: str) -> None:
    mid = id_for_new_copy("tenant-1", "user-1", folder, 4_294_967_295, 1)
    assert re.fullmatch(r"[a-z2-7]{24}", mid), mid


# --- batches -------------------------------------------------------------------------------------


def test_given_no_items_when_batched_then_no_batches() -> None:
    assert batches([], None, max_count=10, max_bytes=100) == []


def test_given_no_sizes_when_batched_then_bounded_by_count_only() -> None:
    assert batches(list(range(7)), None, max_count=3, max_bytes=1) == [[0, 1, 2], [3, 4, 5], [6]]


def test_given_sizes_when_batched_then_no_batch_exceeds_bytes_and_order_kept() -> None:
    sizes = {"a": 40, "b": 40, "c": 40, "d": 10, "e": 60}
    result = batches(list("abcde"), sizes, max_count=10, max_bytes=100)
    assert result == [["a", "b"], ["c", "d"], ["e"]]
    assert [i for batch in result for i in batch] == list("abcde")
    assert all(sum(sizes[i] for i in batch) <= 100 for batch in result)


def test_given_exactly_max_bytes_when_batched_then_fits_in_one_batch() -> None:
    assert batches(["a", "b"], {"a": 60, "b": 40}, max_count=10, max_bytes=100) == [["a", "b"]]


def test_given_count_and_bytes_both_bound_when_batched_then_both_respected() -> None:
    sizes = dict.fromkeys(range(6), 30)
    result = batches(list(range(6)), sizes, max_count=2, max_bytes=100)
    assert result == [[0, 1], [2, 3], [4, 5]]


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["big"], [["big"]]),
        (["big", "s1"], [["big"], ["s1"]]),
        (["s1", "big"], [["s1"], ["big"]]),
        (["s1", "big", "s2"], [["s1"], ["big"], ["s2"]]),
        (["big", "big2"], [["big"], ["big2"]]),
    ],
)
def test_given_an_oversized_item_when_batched_then_alone_in_its_batch(items: list[str], expected: list) -> None:
    sizes = {"big": 500, "big2": 300, "s1": 10, "s2": 10}
    assert batches(items, sizes, max_count=10, max_bytes=100) == expected


def test_given_items_missing_from_sizes_when_batched_then_counted_as_zero_bytes() -> None:
    assert batches(["a", "b", "c"], {"a": 100}, max_count=10, max_bytes=100) == [["a", "b", "c"]]


# --- relinking a message the server moved (finding 12: "a CRM folder stays wrong for good") ------


def _view(**kw: object):
    from mailsync.sync.planner.messages import relink_view

    base = {
        "server_crm_folder": "archive",
        "server_flags": ("\\Flagged",),
        "crm_folder": "inbox",
        "crm_seen": True,
        "ops_pending": False,
        "move_pending": False,
    }
    return relink_view(**{**base, **kw})


def test_relink_without_pending_changes_shows_the_server() -> None:
    view = _view()
    assert (view.folder, view.seen, view.flags) == ("archive", False, ("\\Flagged",))


def test_relink_with_a_pending_seen_change_takes_the_server_folder_and_keeps_the_crm_seen() -> None:
    # Another client moved it INBOX -> Archive while the CRM user marked it read: the folder
    # follows the server, the waiting \Seen stays shown (the pusher applies it at the new place).
    view = _view(ops_pending=True)
    assert (view.folder, view.seen, view.flags) == ("archive", True, ("\\Flagged", "\\Seen"))


def test_relink_with_a_pending_move_keeps_the_crm_folder() -> None:
    view = _view(ops_pending=True, move_pending=True, crm_folder="trash", crm_seen=False)
    assert (view.folder, view.seen, view.flags) == ("trash", False, ("\\Flagged",))


def test_relink_with_a_pending_unread_change_drops_the_server_seen() -> None:
    view = _view(ops_pending=True, server_flags=("\\Seen",), crm_seen=False)
    assert (view.folder, view.seen, view.flags) == ("archive", False, ())


def test_match_key_hashes_message_ids_long_in_utf8_bytes() -> None:
    # 200 characters but 800 bytes: the key ends up in a DynamoDB partition key (<= 2048 bytes).
    long_in_bytes = "😂" * 200
    assert match_key(long_in_bytes, "").startswith("midh:")
    assert match_key("a" * 400, "") == "mid:" + "a" * 400
