"""Message rules (``mailsync.services.messages``) on the in-memory data layer: who sees what,
CRM changes recorded as ops, listings and their cursors."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from mailsync import dal
from mailsync.domain import Account, Address
from mailsync.errors import Conflict, Forbidden, NotFound, ValidationFailed
from mailsync.identity import Principal
from mailsync.schemas import MessagePatchIn, MessageSendIn
from mailsync.services import messages
from tests.unit.fake_dal import WHEN, Fakes, a_message, location_of

ALICE = Principal(user_id="alice", tenant_id="acme", is_admin=False)
BOB = Principal(user_id="bob", tenant_id="acme", is_admin=False)
ADMIN = Principal(user_id="root", tenant_id="acme", is_admin=True)
STRANGER = Principal(user_id="alice", tenant_id="globex", is_admin=True)

FOLDER_MAP = {"inbox": "INBOX", "archive": "Archive", "trash": "Trash"}


def an_account(fake_dal: Fakes, user_id: str = "alice", **overrides: object) -> Account:
    values: dict = {"host": "imap.example.com", "port": 993, "username": user_id, "security": "ssl"}
    account = Account(tenant_id="acme", user_id=user_id, **{**values, "folder_map": FOLDER_MAP, **overrides})
    fake_dal.dal.put_accounts([account])
    return account


@pytest.mark.parametrize(
    ("caller", "confidential", "visible"),
    [
        (ALICE, True, True),
        (BOB, True, False),
        (ADMIN, True, False),
        (BOB, False, True),
        (ADMIN, False, True),
        (STRANGER, False, False),
    ],
    ids=["owner", "colleague-confidential", "admin-confidential", "colleague", "admin", "other-tenant"],
)
def test_who_sees_a_message(fake_dal: Fakes, caller: Principal, confidential: bool, visible: bool) -> None:
    # Given alice's message, confidential or not,
    a_message(fake_dal, "m1", confidential=confidential)

    # When someone asks for it (or its raw copy), Then the owner always sees it, colleagues of the
    # tenant only when not confidential, and a hidden message looks exactly like a missing one.
    if visible:
        assert messages.get_message(caller, "m1").id == "m1"
        assert messages.raw_link(caller, "m1").url.startswith("https://blobs.invalid/raw/m1.eml")
    else:
        for read in (messages.get_message, messages.raw_link):
            with pytest.raises(NotFound) as hidden:
                read(caller, "m1")
            assert hidden.value.message == "Message 'm1' not found"


def test_patch_records_ops_in_order_and_shows_the_crms_wish_as_pending(fake_dal: Fakes) -> None:
    # Given alice's unread message in the inbox,
    an_account(fake_dal)
    a_message(fake_dal, "m1", flags=("\\Flagged",))

    # When she marks it read and files it in the archive,
    out = messages.patch_message(ALICE, "m1", MessagePatchIn(seen=True, folder="archive"))

    # Then the answer shows her wish, pending until the server has it,
    assert (out.seen, out.folder, out.sync_state) == (True, "archive", "pending")
    assert out.flags == ["\\Flagged", "\\Seen"]
    # two ops wait in that order, counted on the message and the account,
    ops = fake_dal.dal.ops_waiting("acme", "alice")
    assert [(op.kind, op.seen, op.folder) for op in ops] == [("seen", True, None), ("move", None, "archive")]
    assert ops[0].seq < ops[1].seq
    stored = fake_dal.dal.find_message("m1")
    assert stored is not None and stored.pending_ops == 2 and stored.server_folder == "INBOX"
    state = fake_dal.dal.get_sync_state("acme", "alice")
    assert state is not None and state.ops_pending == 2
    # and a push job is queued.
    assert fake_dal.queue.jobs() == [("acme", "alice", "push")]


def test_a_new_change_clears_the_previous_failure(fake_dal: Fakes) -> None:
    # Given a message whose last change failed on the server,
    an_account(fake_dal)
    a_message(fake_dal, "m1", last_op_error="NO [CANNOT] no such folder")
    assert messages.get_message(ALICE, "m1").sync_state == "failed"

    # When she changes it again, Then the error is gone and the new change is pending.
    out = messages.patch_message(ALICE, "m1", MessagePatchIn(seen=False))
    assert (out.last_op_error, out.sync_state, out.seen) == (None, "pending", False)


@pytest.mark.parametrize(
    ("caller", "error"),
    [(BOB, Forbidden), (ADMIN, Forbidden), (STRANGER, NotFound)],
    ids=["colleague", "admin", "other"],
)
def test_only_the_owner_changes_a_message(fake_dal: Fakes, caller: Principal, error: type) -> None:
    an_account(fake_dal)
    a_message(fake_dal, "m1")
    with pytest.raises(error):
        messages.patch_message(caller, "m1", MessagePatchIn(seen=True))
    assert fake_dal.dal.ops_waiting("acme", "alice") == [] and fake_dal.queue.sent == []


def test_a_change_to_a_detached_message_is_a_conflict(fake_dal: Fakes) -> None:
    # Given a message that left the server (only its archived copy remains),
    an_account(fake_dal)
    message = a_message(fake_dal, "m1")
    dal.detach(message, location_of(message), "removed")

    # When alice marks it read, Then it is a 409 naming why, and nothing is recorded or queued.
    with pytest.raises(Conflict, match=r"\(removed\)"):
        messages.patch_message(ALICE, "m1", MessagePatchIn(seen=True))
    assert fake_dal.dal.ops_waiting("acme", "alice") == [] and fake_dal.queue.sent == []
    # while the owner's privacy decision still applies to the archived copy.
    assert messages.patch_message(ALICE, "m1", MessagePatchIn(confidential=True)).confidential


def test_a_move_to_an_unmapped_folder_or_an_empty_patch_is_refused(fake_dal: Fakes) -> None:
    an_account(fake_dal, folder_map={"inbox": "INBOX"})
    a_message(fake_dal, "m1")
    with pytest.raises(ValidationFailed) as unmapped:
        messages.patch_message(ALICE, "m1", MessagePatchIn(folder="archive"))
    with pytest.raises(ValidationFailed):
        messages.patch_message(ALICE, "m1", MessagePatchIn())
    assert unmapped.value.field == "folder"
    assert fake_dal.dal.ops_waiting("acme", "alice") == []
    # Without a trash folder mapped, deleting has nowhere to go.
    with pytest.raises(Conflict, match="trash"):
        messages.delete_message(ALICE, "m1")


def test_marking_a_message_confidential_hides_its_whole_thread_and_records_no_op(fake_dal: Fakes) -> None:
    # Given two messages of one thread and one of another, visible to bob,
    an_account(fake_dal)
    a_message(fake_dal, "m1", thread_id="t1")
    a_message(fake_dal, "m2", thread_id="t1")
    a_message(fake_dal, "m3", thread_id="t2")

    # When alice marks m1 confidential,
    out = messages.patch_message(ALICE, "m1", MessagePatchIn(confidential=True))

    # Then the thread is hers alone (marked for later replies too), the other thread stays
    # visible, and nothing waits for the server.
    assert out.confidential and out.sync_state == "synced"
    with pytest.raises(NotFound):
        messages.get_message(BOB, "m2")
    assert messages.get_message(BOB, "m3").id == "m3"
    marks = fake_dal.dal.thread_marks("acme", "alice", ["t1", "t2"])
    assert set(marks) == {"t1"} and marks["t1"].by_owner
    assert fake_dal.dal.ops_waiting("acme", "alice") == [] and fake_dal.queue.sent == []


def test_listing_pages_newest_first_without_gaps_or_repeats(fake_dal: Fakes) -> None:
    # Given five messages a day apart,
    for day in range(5):
        a_message(fake_dal, f"m{day}", internal_date=WHEN + timedelta(days=day))

    # When alice pages through them two at a time,
    seen_ids: list[str] = []
    cursor = None
    for _ in range(5):
        page = messages.list_messages(ALICE, "me", folder=None, seen=None, since=None, limit=2, cursor=cursor)
        seen_ids += [m.id for m in page.messages]
        cursor = page.next_cursor
        if cursor is None:
            break

    # Then every message comes once, newest first, and the listing ends.
    assert seen_ids == ["m4", "m3", "m2", "m1", "m0"]
    assert cursor is None


def test_a_cursor_from_another_listing_or_forged_is_a_422(fake_dal: Fakes) -> None:
    # Given a cursor that alice's inbox listing handed out,
    for day in range(3):
        a_message(fake_dal, f"m{day}", internal_date=WHEN + timedelta(days=day))
    page = messages.list_messages(ALICE, "me", folder="inbox", seen=None, since=None, limit=1, cursor=None)
    assert page.next_cursor is not None

    # When it is used for another listing, or a cursor is made up, Then both are refused on `cursor`.
    forged = base64.urlsafe_b64encode(b'{"pk": {"S": "M#x"}}').decode()
    for folder, cursor in ((None, page.next_cursor), ("inbox", forged), ("inbox", "not a cursor!")):
        with pytest.raises(dal.BadCursor) as refused:
            messages.list_messages(ALICE, "me", folder=folder, seen=None, since=None, limit=1, cursor=cursor)
        assert (refused.value.status, refused.value.field) == (422, "cursor")


def test_a_colleagues_listing_leaves_out_the_confidential_messages(fake_dal: Fakes) -> None:
    an_account(fake_dal)
    a_message(fake_dal, "open")
    a_message(fake_dal, "private", confidential=True)

    def listed(caller: Principal) -> set[str]:
        page = messages.list_messages(caller, "alice", folder=None, seen=None, since=None, limit=10, cursor=None)
        return {m.id for m in page.messages}

    assert listed(ALICE) == {"open", "private"}
    assert listed(ADMIN) == {"open"}
    with pytest.raises(Forbidden):
        listed(BOB)


def test_a_dossier_shows_the_tenants_mail_with_an_address_except_colleagues_confidential_mail(fake_dal: Fakes) -> None:
    # Given mail with carol from alice (one confidential) and from bob, and mail without carol,
    carol = (Address("Carol@Client.example"),)
    a_message(fake_dal, "a-open", from_=carol)
    a_message(fake_dal, "a-private", from_=carol, confidential=True)
    a_message(fake_dal, "b-open", user_id="bob", to=carol)
    a_message(fake_dal, "other", from_=(Address("dave@else.example"),))

    def dossier(caller: Principal) -> dict[str, str]:
        page = messages.contact_messages(caller, " carol@client.example ", 10, None)
        return {m.id: m.owner for m in page.messages}

    # When alice and bob open carol's dossier, Then each sees their own confidential mail only.
    assert dossier(ALICE) == {"a-open": "alice", "a-private": "alice", "b-open": "bob"}
    assert dossier(BOB) == {"a-open": "alice", "b-open": "bob"}


def test_sync_status_shows_counts_to_the_owner_only(fake_dal: Fakes) -> None:
    # Given alice's account with two synced copies in INBOX,
    an_account(fake_dal, folder_map={"inbox": "INBOX"})
    a_message(fake_dal, "m1")
    a_message(fake_dal, "m2", confidential=True)

    # When she and an admin look at the sync status,
    mine = messages.sync_status(ALICE, "me")
    admins = messages.sync_status(ADMIN, "alice")

    # Then only she gets counts (they include confidential mail); nobody synced yet: "never".
    assert [(f.crm_folder, f.messages) for f in mine.folders] == [("inbox", 2)]
    assert [(f.crm_folder, f.messages) for f in admins.folders] == [("inbox", None)]
    assert (mine.state, mine.account_status) == ("never", "pending")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"fetch_enabled": False}, "fetch_enabled"), ({"protocol": "pop3"}, None), ({}, None)],
    ids=["disabled", "pop3", "imap"],
)
def test_a_sync_request_is_queued_only_for_an_enabled_account(
    fake_dal: Fakes, overrides: dict, field: str | None
) -> None:
    an_account(fake_dal, **overrides)
    if field is None:
        messages.request_sync(ALICE, "me")
        assert fake_dal.queue.jobs() == [("acme", "alice", "user")]
    else:
        with pytest.raises(ValidationFailed) as refused:
            messages.request_sync(ALICE, "me")
        assert refused.value.field == field and fake_dal.queue.sent == []


@pytest.mark.parametrize(
    ("caller", "body", "error"),
    [
        (ADMIN, {"folder": "inbox"}, Forbidden),
        (ALICE, {"folder": "drafts"}, ValidationFailed),
        (ALICE, {"folder": "inbox", "raw": "***"}, ValidationFailed),
        (ALICE, {"folder": "inbox", "raw": base64.b64encode(b"  \r\n").decode()}, ValidationFailed),
        (ALICE, {"folder": "inbox", "raw": base64.b64encode(b"X: " + b"y" * 70_000).decode()}, ValidationFailed),
    ],
    ids=["not-the-owner", "unmapped-folder", "not-base64", "empty", "header-too-large"],
)
def test_a_message_written_in_the_crm_is_refused_before_anything_is_stored(
    fake_dal: Fakes, caller: Principal, body: dict, error: type
) -> None:
    an_account(fake_dal)
    raw = base64.b64encode(b"Subject: hi\r\n\r\nhello").decode()
    with pytest.raises(error):
        messages.send_message(caller, "alice", MessageSendIn.model_validate({"raw": raw, **body}))
    assert fake_dal.dal.messages == {} and fake_dal.blobs.objects == {} and fake_dal.queue.sent == []
