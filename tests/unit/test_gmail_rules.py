"""Gmail's labels in the CRM's terms: the decisions (``sync.planner.gmail``, one test per rule)
and how the sync carries them out (``sync.gmail.GmailLabels`` with a recorded data layer and
connection: Gmail's extensions are not available on a local server)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from mailsync import dal
from mailsync.domain import Location, Message
from mailsync.mailbox.base import ServerFolder
from mailsync.mailbox.connection import MessageSummary
from mailsync.mailbox.gmail import GmailAttributes
from mailsync.sync.gmail import GmailLabels
from mailsync.sync.planner import gmail as rules
from mailsync.sync.planner.folders import ServerStatus
from mailsync.sync.planner.messages import Arrival, Known, Relink

ALL_MAIL = "[Gmail]/All Mail"
TRASH = "[Gmail]/Trash"


def copy(folder: str, crm: str) -> rules.Copy:
    return rules.Copy(folder, crm)


# -- identity ------------------------------------------------------------------------------------


def test_identity_is_the_x_gm_msgid_and_the_same_in_every_label_folder() -> None:
    key = rules.match_key(1278455344230334865)
    assert key == "gm:1278455344230334865" and rules.msgid_of(key) == 1278455344230334865
    assert rules.msgid_of("mid:abc@example.com") is None and rules.msgid_of("gm:12x") is None
    one = rules.message_id("t1", "u1", 1278455344230334865)
    assert one == rules.message_id("t1", "u1", 1278455344230334865)
    assert one != rules.message_id("t1", "u1", 1278455344230334866)
    assert one != rules.message_id("t1", "u2", 1278455344230334865)
    assert rules.thread_id(1266894439832287888) == "gmthr:1266894439832287888"


# -- rule 1: a label added --------------------------------------------------------------------------


def test_rule_1_a_label_added_moves_the_crm_folder_only_to_a_higher_ranked_folder() -> None:
    archived = copy("Clients", "clients")
    # The Inbox label added to a message filed under "Clients": the CRM shows it in inbox
    assert rules.on_new_copy(archived, copy("INBOX", "inbox"), all_mail=ALL_MAIL) is rules.NewCopy.BECOMES_PRIMARY
    # A "Clients" label added to a message in the inbox: recorded, the CRM folder stays inbox
    assert rules.on_new_copy(copy("INBOX", "inbox"), archived, all_mail=ALL_MAIL) is rules.NewCopy.RECORDED
    # All Mail (mapped as archive) never takes a message from a label folder
    assert rules.on_new_copy(archived, copy(ALL_MAIL, "archive"), all_mail=ALL_MAIL) is rules.NewCopy.RECORDED
    # The same folder again (a rerun) changes nothing
    assert rules.on_new_copy(archived, archived, all_mail=ALL_MAIL) is rules.NewCopy.RECORDED


def test_ranking_inbox_sent_drafts_other_folders_archive_all_mail_trash() -> None:
    copies = [
        copy(TRASH, "trash"),
        copy(ALL_MAIL, "everything"),
        copy("[Gmail]/Archive-ish", "archive"),
        copy("Projects", "projects"),
        copy("Clients", "clients"),
        copy("[Gmail]/Drafts", "drafts"),
        copy("[Gmail]/Sent Mail", "sent"),
        copy("INBOX", "inbox"),
    ]
    ordered = sorted(copies, key=lambda c: rules.rank(c, all_mail=ALL_MAIL))
    assert [c.crm_folder for c in ordered] == [
        "inbox",
        "sent",
        "drafts",
        "clients",
        "projects",
        "archive",
        "everything",
        "trash",
    ]


# -- rule 2 and 3: a label removed -----------------------------------------------------------------


def test_rule_3_the_primary_label_removed_the_best_remaining_copy_takes_over() -> None:
    remaining = [copy(ALL_MAIL, "archive"), copy("Projects", "projects"), copy("Clients", "clients")]
    assert rules.on_primary_gone(remaining, all_mail=ALL_MAIL) == copy("Clients", "clients")
    assert rules.on_primary_gone([copy(ALL_MAIL, "archive")], all_mail=ALL_MAIL) == copy(ALL_MAIL, "archive")
    # In no mapped folder any more: it leaves the sync as on any server
    assert rules.on_primary_gone([], all_mail=ALL_MAIL) is None


# -- rule 4: CRM moves and deletions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target", "method"),
    [
        ("INBOX", "Clients", rules.MoveMethod.MOVE),  # Inbox label off, Clients on
        ("INBOX", ALL_MAIL, rules.MoveMethod.MOVE),  # archiving: the Inbox label off
        ("INBOX", TRASH, rules.MoveMethod.MOVE),  # deletion: to the Trash folder
        (ALL_MAIL, "INBOX", rules.MoveMethod.ADD_LABEL),  # never an expunge from All Mail
        (ALL_MAIL, "Clients", rules.MoveMethod.ADD_LABEL),
        (ALL_MAIL, TRASH, rules.MoveMethod.MOVE),  # deleting from All Mail is a move to Trash
    ],
)
def test_rule_4_a_crm_move_is_done_the_gmail_way(source: str, target: str, method: rules.MoveMethod) -> None:
    assert rules.crm_move(source, target, all_mail=ALL_MAIL, trash=TRASH) is method


def test_rule_4_without_a_known_all_mail_folder_every_move_is_a_move() -> None:
    assert rules.crm_move(ALL_MAIL, "INBOX", all_mail=None, trash=None) is rules.MoveMethod.MOVE


# -- carried out: sync.gmail.GmailLabels -------------------------------------------------------------

WHEN = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
MSGID = 1278455344230334865


class RecordingConnection:
    def __init__(self, locations: dict[str, dict[int, int]]) -> None:
        self.locations = locations  # folder -> msgid -> uid
        self.searched: list[str] = []

    def list_folders(self) -> list[ServerFolder]:
        return [
            ServerFolder("INBOX", "/", (), None),
            ServerFolder(ALL_MAIL, "/", ("\\All",), "\\All"),
            ServerFolder(TRASH, "/", ("\\Trash",), "\\Trash"),
            ServerFolder("Clients", "/", (), None),
        ]

    def gmail_locate(self, folder: str, msgids: list[int]) -> dict[int, int]:
        self.searched.append(folder)
        return {m: uid for m, uid in self.locations.get(folder, {}).items() if m in msgids}


@dataclass
class RecordingSync:
    conn: RecordingConnection
    crm_for: dict[str, str]
    tenant: str = "t1"
    user: str = "u1"
    vanished: list[Known] = field(default_factory=list)
    snapshots: dict[str, ServerStatus] = field(default_factory=dict)
    relinked: list[Relink] = field(default_factory=list)

    def _relink(self, relink: Relink) -> None:
        self.relinked.append(relink)

    def _location(self, known: Known | Arrival, new_id: str | None = None) -> Location:
        return Location(
            tenant_id=self.tenant,
            user_id=self.user,
            server_folder=known.server_folder,
            uidvalidity=known.uidvalidity,
            uid=known.uid,
            id=new_id or known.id,  # type: ignore[union-attr]
            internal_date=known.internal_date,
            match_key=known.match_key,
            flags=tuple(known.flags),
        )


def a_message(folder: str, uid: int, crm: str, **overrides: Any) -> Message:
    values: dict[str, Any] = {
        "id": rules.message_id("t1", "u1", MSGID),
        "tenant_id": "t1",
        "user_id": "u1",
        "folder": crm,
        "server_folder": folder,
        "uidvalidity": 7,
        "uid": uid,
        "flags": (),
        "seen": False,
        "internal_date": WHEN,
        "size": 10,
        "match_key": rules.match_key(MSGID),
        "s3_key": "k",
        "content_hash": "h",
        "state": "synced",
        "thread_id": "t",
    }
    values.update(overrides)
    return Message(**values)


def arrival(folder: str, uid: int, msgid: int = MSGID) -> Arrival:
    return Arrival(folder, 7, uid, (), WHEN, 10, rules.match_key(msgid))


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"messages": {}, "locations": []}
    monkeypatch.setattr(
        dal, "find_messages", lambda ids: {i: state["messages"][i] for i in ids if i in state["messages"]}
    )

    def relink(message: Message, to: Location, shown: dict[str, Any], old: Location | None) -> None:
        state["locations"].append((message.id, to, old))

    monkeypatch.setattr(dal, "relink", relink)
    return state


def test_a_second_label_copy_is_one_crm_message_recorded_not_created(stored: dict[str, Any]) -> None:
    # Given a message the CRM shows in inbox, and its copy arriving in the mapped "Clients"
    message = a_message("INBOX", 3, "inbox")
    stored["messages"][message.id] = message
    sync = RecordingSync(RecordingConnection({}), {"INBOX": "inbox", "Clients": "clients"})
    new = arrival("Clients", 40)
    other = arrival("Clients", 41, msgid=99)
    # When the batch's arrivals pass the Gmail rules
    rest, revive = GmailLabels(sync).known_copies([new, other])  # type: ignore[arg-type]
    # Then only the unknown message is left to create; the copy is a location of the same message
    assert rest == [other] and revive == {}
    assert [(i, loc.server_folder, loc.uid, old) for i, loc, old in stored["locations"]] == [
        (message.id, "Clients", 40, None)
    ]
    assert sync.relinked == []


def test_an_inbox_label_added_to_a_filed_message_moves_it_to_inbox_and_keeps_the_old_copy(
    stored: dict[str, Any],
) -> None:
    message = a_message("Clients", 40, "clients")
    stored["messages"][message.id] = message
    sync = RecordingSync(RecordingConnection({}), {"INBOX": "inbox", "Clients": "clients"})
    rest, _ = GmailLabels(sync).known_copies([arrival("INBOX", 3)])  # type: ignore[arg-type]
    assert rest == []
    assert sync.relinked == [Relink(arrival("INBOX", 3), message.id, None)]  # old=None: Clients stays a copy


def test_an_arrival_of_a_detached_message_revives_it_and_one_whose_copy_vanished_is_a_move(
    stored: dict[str, Any],
) -> None:
    detached = a_message("INBOX", 3, "inbox", state="detached", server_folder=None)
    stored["messages"][detached.id] = detached
    sync = RecordingSync(RecordingConnection({}), {"INBOX": "inbox", "Clients": "clients"})
    labels = GmailLabels(sync)  # type: ignore[arg-type]
    rest, revive = labels.known_copies([arrival("Clients", 40)])
    assert rest == [arrival("Clients", 40)] and revive == {rules.match_key(MSGID): [detached.id]}
    # A label moved (its old copy vanished in this sync) is left to the usual move matching
    stored["messages"][detached.id] = a_message("INBOX", 3, "inbox")
    sync.vanished = [Known(detached.id, "INBOX", 7, 3, (), rules.match_key(MSGID), WHEN)]
    assert labels.known_copies([arrival("Clients", 40)]) == ([arrival("Clients", 40)], {})
    assert stored["locations"] == [] and sync.relinked == []


def test_the_primary_label_removed_the_message_stays_and_follows_its_best_copy(stored: dict[str, Any]) -> None:
    # Given a message shown in inbox, also labelled Clients and in All Mail (mapped as archive)
    message = a_message("INBOX", 3, "inbox")
    stored["messages"][message.id] = message
    conn = RecordingConnection({"Clients": {MSGID: 40}, ALL_MAIL: {MSGID: 900}})
    crm_for = {"INBOX": "inbox", "Clients": "clients", ALL_MAIL: "archive"}
    sync = RecordingSync(conn, crm_for, snapshots={f: ServerStatus(7, 1000, 5, 1) for f in crm_for})
    gone = Known(message.id, "INBOX", 7, 3, ("\\Seen",), rules.match_key(MSGID), WHEN)
    # When its Inbox label is removed (archived in Gmail)
    rest, moved_away = GmailLabels(sync).rehome([gone])  # type: ignore[arg-type]
    # Then it is not detached: it now shows in clients, at the Clients copy, with its flags
    assert rest == [] and moved_away == set()
    (relink,) = sync.relinked
    assert relink.id == message.id and relink.old == gone
    assert (relink.arrival.server_folder, relink.arrival.uid, relink.arrival.flags) == ("Clients", 40, ("\\Seen",))


def test_a_message_left_in_no_mapped_folder_is_detached_moved_unmapped_or_removed(stored: dict[str, Any]) -> None:
    archived = a_message("INBOX", 3, "inbox")
    gone_for_good = a_message("INBOX", 4, "inbox", id="other", match_key=rules.match_key(77))
    stored["messages"].update({archived.id: archived, gone_for_good.id: gone_for_good})
    conn = RecordingConnection({ALL_MAIL: {MSGID: 900}})
    sync = RecordingSync(conn, {"INBOX": "inbox"}, snapshots={"INBOX": ServerStatus(7, 1000, 5, 1)})
    vanished = [
        Known(archived.id, "INBOX", 7, 3, (), rules.match_key(MSGID), WHEN),
        Known(gone_for_good.id, "INBOX", 7, 4, (), rules.match_key(77), WHEN),
    ]
    rest, moved_away = GmailLabels(sync).rehome(vanished)  # type: ignore[arg-type]
    # Archived with only INBOX mapped: moved_unmapped (Gmail still has it); deleted for good: removed
    assert rest == vanished and moved_away == {rules.match_key(MSGID)}
    assert sync.relinked == []
    # Only the mapped folders and Gmail's All Mail, Trash (and Spam, when listed) were searched
    assert conn.searched == ["INBOX", ALL_MAIL, TRASH]


def test_a_removed_secondary_label_is_no_search_and_no_detachment(stored: dict[str, Any]) -> None:
    message = a_message("INBOX", 3, "inbox")
    stored["messages"][message.id] = message
    conn = RecordingConnection({})
    sync = RecordingSync(conn, {"INBOX": "inbox", "Clients": "clients"})
    secondary = Known(message.id, "Clients", 7, 40, (), rules.match_key(MSGID), WHEN)
    # The engine's on_vanished then drops the location only (the message is not at it)
    assert GmailLabels(sync).rehome([secondary]) == ([secondary], set())  # type: ignore[arg-type]
    assert conn.searched == []


def test_new_messages_get_the_gmail_id_and_thread() -> None:
    sync = RecordingSync(RecordingConnection({}), {"INBOX": "inbox"})
    labels = GmailLabels(sync)  # type: ignore[arg-type]
    summary = MessageSummary(3, (), WHEN, 10, "a@b", GmailAttributes(MSGID, 1266894439832287888, ("\\Inbox",)))
    assert labels.match_key("INBOX", summary) == rules.match_key(MSGID)
    assert labels.match_key("INBOX", replace(summary, gmail=None)) is None
    new_id = labels.new_id(arrival("INBOX", 3), "folder-derived")
    assert new_id == rules.message_id("t1", "u1", MSGID)
    assert labels.new_id(replace(arrival("INBOX", 5), match_key="mid:a@b"), "folder-derived") == "folder-derived"
    message = labels.thread_of(a_message("INBOX", 3, "inbox", thread_id="from-headers"))
    assert message.thread_id == rules.thread_id(1266894439832287888)
    assert labels.thread_of(a_message("INBOX", 9, "inbox", thread_id="x")).thread_id == "x"


def test_the_pusher_asks_the_folder_list_for_all_mail_and_trash_whatever_their_names() -> None:
    from mailsync.sync import gmail as carried_out

    conn = RecordingConnection({})
    assert carried_out.move_method(conn, ALL_MAIL, "INBOX") == (rules.MoveMethod.ADD_LABEL, None)  # type: ignore[arg-type]
    assert carried_out.move_method(conn, ALL_MAIL, TRASH) == (rules.MoveMethod.MOVE, "\\Trash")  # type: ignore[arg-type]
    assert carried_out.move_method(conn, "INBOX", "Clients") == (rules.MoveMethod.MOVE, None)  # type: ignore[arg-type]
