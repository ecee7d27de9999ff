"""The data layer's domain API against the provisioned tables (moto): values in, values out."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import boto3
import pytest

from mailsync.domain import Address, Attachment, Change, Location, Message

T, U = "acme", "alice"
WHEN = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _message(message_id: str, minutes: int = 0, **fields) -> Message:
    values = {
        "id": message_id,
        "tenant_id": T,
        "user_id": U,
        "folder": "inbox",
        "server_folder": "INBOX",
        "internal_date": WHEN + timedelta(minutes=minutes),
        "size": 10,
        "match_key": f"mid:{message_id}@x",
        "s3_key": f"raw/{message_id}.eml",
        "content_hash": "0" * 64,
        "thread_id": f"thread-{message_id}",
        "uidvalidity": 7,
        "uid": minutes + 1,
        "internet_message_id": f"{message_id}@x",
        "from_": (Address("Bob@Example.com", "Bob"),),
        "to": (Address("alice@example.com"),),
        "attachments": (Attachment("application/pdf", 3, None),),
    }
    return Message(**(values | fields))


def _location(message: Message, server_folder: str = "INBOX", uid: int | None = None) -> Location:
    return Location(
        tenant_id=T,
        user_id=U,
        server_folder=server_folder,
        uidvalidity=7,
        uid=uid if uid is not None else int(message.uid or 1),
        id=message.id,
        internal_date=message.internal_date,
        match_key=message.match_key,
        flags=("\\Seen",),
    )


def test_a_stored_message_reads_back_equal_and_lists_newest_first(aws: dict[str, str]) -> None:
    from mailsync import dal

    older, newer = _message("m1", 0), _message("m2", 5, seen=True, flags=("\\Seen",))
    dal.store_new_messages([(older, _location(older)), (newer, _location(newer))])

    stored = dal.find_message("m1")
    assert stored is not None
    assert dataclasses.replace(stored, created_at=None, updated_at=None) == older
    assert [loc.id for loc in dal.folder_locations(T, U, "INBOX")] == ["m1", "m2"]
    assert dal.ids_for_match_key(T, U, "mid:m2@x") == ["m2"]

    page, cursor = dal.list_messages(T, U, folder=None, since=None, seen=None, limit=1, cursor=None)
    assert [m.id for m in page] == ["m2"] and cursor is not None
    rest, end = dal.list_messages(T, U, folder=None, since=None, seen=None, limit=5, cursor=cursor)
    assert [m.id for m in rest] == ["m1"] and end is None


def test_a_cursor_of_another_listing_is_refused(aws: dict[str, str]) -> None:
    from mailsync import dal

    for n in range(2):
        message = _message(f"c{n}", n)
        dal.store_new_messages([(message, _location(message))])
    _, cursor = dal.list_messages(T, U, folder="inbox", since=None, seen=None, limit=1, cursor=None)
    assert cursor is not None
    with pytest.raises(dal.BadCursor, match="does not belong"):
        dal.list_messages(T, U, folder="archive", since=None, seen=None, limit=1, cursor=cursor)
    with pytest.raises(dal.BadCursor, match="not a cursor"):
        dal.list_messages(T, U, folder=None, since=None, seen=None, limit=1, cursor=cursor)
    with pytest.raises(dal.BadCursor):
        dal.list_messages(T, U, folder="inbox", since=None, seen=None, limit=1, cursor="not-a-cursor")


def test_relink_moves_the_location_and_the_folder_index_together(aws: dict[str, str]) -> None:
    from mailsync import dal

    message = _message("r1")
    old = _location(message)
    dal.store_new_messages([(message, old)])
    new = _location(message, "Archive", uid=40)
    dal.relink(message, new, {"folder": "archive", "server_folder": "Archive", "uid": 40}, old)

    assert list(dal.folder_locations(T, U, "INBOX")) == []
    assert [loc.uid for loc in dal.folder_locations(T, U, "Archive")] == [40]
    in_archive, _ = dal.list_messages(T, U, folder="archive", since=None, seen=None, limit=5, cursor=None)
    assert [(m.id, m.folder, m.uid) for m in in_archive] == [("r1", "archive", 40)]
    aged = dal.aged_out(T, U, "Archive", WHEN + timedelta(days=1), limit=10)
    assert [(loc.uidvalidity, loc.uid) for loc in aged] == [(7, 40)]


def test_detach_keeps_the_message_and_drops_its_location(aws: dict[str, str]) -> None:
    from mailsync import dal

    message = _message("d1")
    location = _location(message)
    dal.store_new_messages([(message, location)])
    dal.detach(message, location, "removed")

    detached = dal.find_message("d1")
    assert detached is not None and (detached.state, detached.detach_reason) == ("detached", "removed")
    assert dal.find_locations(T, U, "INBOX", [(7, 1)]) == {}
    assert dal.aged_out(T, U, "INBOX", WHEN + timedelta(days=1), limit=10) == []


def window_items(aws: dict[str, str]) -> list[str]:
    """The sort keys of every window item (``#W#`` partition) in the messages table."""
    items = boto3.client("dynamodb").scan(TableName=aws["MESSAGES_TABLE"])["Items"]
    return sorted(item["sk"]["S"] for item in items if "#W#" in item["pk"]["S"])


def test_messages_are_stored_moved_and_detached_without_window_items(aws: dict[str, str]) -> None:
    from mailsync import dal

    kept, moved, detached, dropped = (_message(f"n{i}", i) for i in range(4))
    dal.store_new_messages([(m, _location(m)) for m in (kept, moved, detached, dropped)])
    assert window_items(aws) == []

    dal.relink(moved, _location(moved, "Archive", uid=40), {"server_folder": "Archive", "uid": 40}, _location(moved))
    dal.detach(detached, _location(detached), "removed")
    dal.drop(_location(dropped))
    assert window_items(aws) == []
    assert [loc.id for loc in dal.folder_locations(T, U, "INBOX")] == ["n0"]
    assert [loc.id for loc in dal.folder_locations(T, U, "Archive")] == ["n1"]
    dal.drop(_location(dropped))  # already gone: nothing to do, no error


def test_copies_age_out_by_their_locations_internal_date(aws: dict[str, str]) -> None:
    from mailsync import dal

    older, newer = _message("a1", 0), _message("a2", 5)
    dal.store_new_messages([(older, _location(older)), (newer, _location(newer))])

    def aged(cutoff: datetime, limit: int = 10) -> list[str]:
        return [loc.id for loc in dal.aged_out(T, U, "INBOX", cutoff, limit=limit)]

    assert aged(WHEN) == [], "a copy dated at the cutoff is still in the window"
    assert aged(WHEN + timedelta(microseconds=1)) == ["a1"]
    # The cutoff in another zone is the same instant: 14:01 at UTC+2 is 12:01 UTC, before a2 (12:05).
    assert aged((WHEN + timedelta(minutes=1)).astimezone(timezone(timedelta(hours=2)))) == ["a1"]
    assert aged(WHEN + timedelta(days=1)) == ["a1", "a2"]
    assert aged(WHEN + timedelta(days=1), limit=1) == ["a1"]
    assert aged(WHEN - timedelta(days=1)) == []


def test_window_items_of_earlier_builds_still_age_out_and_are_deleted(aws: dict[str, str]) -> None:
    from mailsync import dal
    from mailsync.dal import _keys as keys
    from mailsync.dal._models import WindowModel

    def legacy_window(message: Message) -> None:
        """The window item an earlier build wrote along with the message's location."""
        WindowModel(
            keys.window_pk(T, U, "INBOX"),
            keys.window_sk(message.internal_date, 7, int(message.uid or 0)),
            id=message.id,
            loc_sk=keys.location_sk(7, int(message.uid or 0)),
        ).save()

    live, orphaned, recent = _message("w1", 0), _message("w2", 1), _message("w3", 60 * 24 * 2)
    dal.store_new_messages([(m, _location(m)) for m in (live, orphaned, recent)])
    for message in (live, orphaned, recent):
        legacy_window(message)
    dal.drop(_location(orphaned))  # its window stays behind, as this build leaves it
    assert len(window_items(aws)) == 3

    aged = dal.aged_out(T, U, "INBOX", WHEN + timedelta(days=1), limit=10)
    assert [loc.id for loc in aged] == ["w1"]
    assert window_items(aws) == [keys.window_sk(recent.internal_date, 7, int(recent.uid or 0))]

    dal.detach(live, aged[0], "aged_out")
    detached = dal.find_message("w1")
    assert detached is not None and (detached.state, detached.detach_reason) == ("detached", "aged_out")
    assert dal.aged_out(T, U, "INBOX", WHEN + timedelta(days=1), limit=10) == []
    aged_later = dal.aged_out(T, U, "INBOX", WHEN + timedelta(days=3), limit=10)
    assert [loc.id for loc in aged_later] == ["w3"]
    assert window_items(aws) == []


def test_changes_become_ops_in_order_and_finishing_one_updates_the_message(aws: dict[str, str]) -> None:
    from mailsync import dal

    message = _message("o1")
    dal.store_new_messages([(message, _location(message))])
    dal.record_changes(message, [Change("seen", seen=True), Change("move", folder="archive")], {"folder": "archive"})

    ops = dal.ops_waiting(T, U)
    assert [(op.kind, op.id, op.seen, op.folder) for op in ops] == [
        ("seen", "o1", True, None),
        ("move", "o1", None, "archive"),
    ]
    assert ops[0].seq < ops[1].seq
    shown = dal.find_message("o1")
    assert shown is not None and (shown.folder, shown.pending_ops) == ("archive", 2)
    state = dal.get_sync_state(T, U)
    assert state is not None and state.ops_pending == 2

    assert dal.count_attempt(ops[0]) == 1
    dal.finish_op(ops[0], shown, {"last_op_error": "refused"})
    assert [op.kind for op in dal.ops_waiting(T, U)] == ["move"]
    after = dal.find_message("o1")
    assert after is not None and (after.pending_ops, after.last_op_error) == (1, "refused")
    assert dal.count_attempt(ops[0]) == 0, "a finished op counts no attempts"


def test_an_account_round_trips_and_updates_return_what_was_written(aws: dict[str, str]) -> None:
    from mailsync import dal
    from mailsync.domain import Account

    account = Account(tenant_id=T, user_id=U, host="imap.example.com", port=993, username="a", security="ssl")
    created = dal.create_account(account)
    assert created is not None and dal.create_account(account) is None, "a second create is refused"
    read = dal.get_account(T, U)
    assert read is not None and read.mapped_folders() == {"inbox": "INBOX"}
    changed = dal.update_account(read, {"folder_map": {"inbox": "INBOX", "trash": "Trash"}})
    assert changed.folder_map == {"inbox": "INBOX", "trash": "Trash"}
    assert dal.get_account(T, U) == changed
    assert dal.update_account_if_version(changed, {"status": "ok"}, version=2) is None


def test_many_accounts_and_their_sync_states_are_read_in_requests_of_fifty(aws: dict[str, str]) -> None:
    from devstack.aws_calls import count_aws_calls
    from mailsync import dal
    from mailsync.domain import Account

    users = [f"user{i:03d}" for i in range(57)]  # 50 accounts to a request
    for user in users:
        dal.create_account(
            Account(tenant_id=T, user_id=user, host="imap.example.com", port=993, username=user, security="ssl")
        )
    leased = users[::10]  # a sync state for some of them (the lease writes it)
    for user in leased:
        assert dal.take_lease(T, user, "worker-1", 60) is not None
    wanted = [(T, u) for u in users] + [(T, "nobody"), ("other-tenant", users[0]), (T, users[0])]

    with count_aws_calls("dynamodb") as calls:
        read = dal.get_accounts_and_sync_states(wanted, consistent=False)

    assert calls == {"BatchGetItem": 2}, calls  # 59 distinct accounts (2 keys each): 50, then 9
    assert set(read) == set(wanted)
    for user in users:
        account, state = read[(T, user)]
        assert account is not None and account.username == user
        assert (state is not None and state.lease_owner == "worker-1") == (user in leased)
    assert read[(T, "nobody")] == (None, None)
    assert read[("other-tenant", users[0])] == (None, None), "another tenant's user of the same name is not read"
    assert dal.get_account_and_sync_state(T, users[0]) == read[(T, users[0])]


def test_tenant_settings_read_for_syncs_are_at_most_max_age_old(
    aws: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync import dal
    from mailsync.dal import _store
    from mailsync.dal._models import TENANT_SETTINGS_USER, TenantSettingsModel

    clock = [1_000.0]
    monkeypatch.setattr(_store.time, "monotonic", lambda: clock[0])
    max_age = dal.TENANT_SETTINGS_MAX_AGE_SECONDS
    assert dal.get_tenant_settings("acme", max_age=max_age) is None  # never saved: that is kept too

    # Another process (the API) saves new keywords.
    TenantSettingsModel("acme", TENANT_SETTINGS_USER, confidential_keywords=["geheim"], confidential_contacts=[]).save()
    clock[0] += max_age
    assert dal.get_tenant_settings("acme", max_age=max_age) is None  # this process's copy, max_age old
    assert dal.get_tenant_settings("acme").confidential_keywords == ("geheim",)  # no max_age: read now
    TenantSettingsModel("acme", TENANT_SETTINGS_USER, confidential_keywords=["intern"], confidential_contacts=[]).save()
    clock[0] += max_age + 0.001
    assert dal.get_tenant_settings("acme", max_age=max_age).confidential_keywords == ("intern",)

    # A save in this process is what the next sync here applies, at once.
    dal.save_tenant_settings("acme", ["vertrouwelijk"], ["ceo@example.com"])
    kept = dal.get_tenant_settings("acme", max_age=max_age)
    assert kept.confidential_keywords == ("vertrouwelijk",) and kept.confidential_contacts == ("ceo@example.com",)
    # Tenants are kept apart.
    assert dal.get_tenant_settings("globex", max_age=max_age) is None


def test_tenant_settings_kept_for_syncs_are_bounded_in_number_and_age(
    aws: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync import dal
    from mailsync.dal import _store

    clock = [1_000.0]
    monkeypatch.setattr(_store.time, "monotonic", lambda: clock[0])
    max_age = dal.TENANT_SETTINGS_MAX_AGE_SECONDS
    for i in range(_store._tenant_settings.size + 5):
        dal.get_tenant_settings(f"t{i}", max_age=max_age)
    assert len(_store._tenant_settings.copies) == _store._tenant_settings.size
    assert "t0" not in _store._tenant_settings.copies  # the least recently used went first
    clock[0] += max_age + 1
    dal.get_tenant_settings("late", max_age=max_age)
    assert list(_store._tenant_settings.copies) == ["late"]  # copies no sync may use any more are dropped

    # A read that began before a save in this process does not put the older copy back.
    started = clock[0]
    clock[0] += 1
    dal.save_tenant_settings("late", ["geheim"], [])
    _store._tenant_settings.keep("late", None, started)
    assert dal.get_tenant_settings("late", max_age=max_age).confidential_keywords == ("geheim",)


def test_the_idempotency_store_is_built_once_per_client(aws: dict[str, str]) -> None:
    # Each persistence layer built registers a Powertools hook on the DynamoDB client, never
    # removed: one built per send made the hooks every request runs grow with each send.
    from mailsync import dal
    from mailsync.aws import client, reset_clients

    store = dal.idempotency_store()
    assert dal.idempotency_store() is store
    assert store.client is client("dynamodb")
    reset_clients()
    assert dal.idempotency_store().client is client("dynamodb"), "a new client gets its own store"
