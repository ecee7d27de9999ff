"""Convergence with another mail client acting around and during syncs (finding 12), and a
mapped folder deleted on the server. All against the real Dovecot; "another client" is a second
IMAP connection, acting at a chosen point of the sync through a hooked reader."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailsync.mailbox.connection import ImapConnection
from tests.integration.sync_support import Account, capture_events, connect_account, days_ago, message


@pytest.fixture
def account(api, local_mail_env, mail_user) -> Account:
    return connect_account(api, mail_user)


class HookedReader:
    """The real connection that runs ``action`` once, after the sync's STATUS snapshot, just
    before the engine first opens ``folder`` (EXAMINE, or the QRESYNC/CONDSTORE EXAMINE)."""

    def __init__(self, session: ImapConnection, folder: str, action: Callable[[], None]) -> None:
        self._session = session
        self._folder, self._action = folder, action
        self._snapshot_taken = False
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def status(self, folders: Any) -> Any:
        out = self._session.status(folders)
        self._snapshot_taken = True
        return out

    def _hook(self, folder: str) -> None:
        if self._snapshot_taken and folder == self._folder and not self.fired:
            self.fired = True
            self._action()

    def examine(self, folder: str) -> Any:
        self._hook(folder)
        return self._session.examine(folder)

    def changes_since(self, folder: str, *args: Any, **kwargs: Any) -> Any:
        self._hook(folder)
        return self._session.changes_since(folder, *args, **kwargs)


def hooked(folder: str, action: Callable[[], None], readers: list[HookedReader]) -> Callable[[Any], Any]:
    def factory(session: ImapConnection) -> Any:
        readers.append(HookedReader(session, folder, action))
        return readers[-1]

    return factory


# --- a move seen mid-sync keeps the CRM id -------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        # INBOX was scanned with the message still there; Archive is scanned after the move.
        "Archive",
        # The move lands before INBOX is scanned: INBOX sees it gone, Archive's copy is past the snapshot.
        "INBOX",
    ],
    ids=["after-the-source-scan", "before-the-source-scan"],
)
def test_a_move_between_the_snapshot_and_the_scan_keeps_the_id(account: Account, aws, moment: str) -> None:
    with account.user.client() as imap:
        uid = imap.append("INBOX", message("moving", days=1), internal_date=days_ago(1))
    assert account.sync().status == "synced"
    original = account.synced()["moving"]
    events = capture_events(aws["EVENT_BUS_NAME"])
    with account.user.client() as imap:
        # Both folders change, so neither is skipped by the snapshot.
        imap.append("INBOX", message("new in inbox", days=0.5), internal_date=days_ago(0.5))
        imap.append("Archive", message("new in archive", days=0.5), internal_date=days_ago(0.5))

    def other_client_moves() -> None:
        with account.user.client() as other:
            other.move("INBOX", uid, "Archive")

    readers: list[HookedReader] = []
    assert account.sync(connection_factory=hooked(moment, other_client_moves, readers)).status == "synced"
    assert readers and readers[0].fired
    assert account.sync().status == "synced"

    everything = account.messages()
    assert sorted(m["subject"] for m in everything) == ["moving", "new in archive", "new in inbox"]
    moved = next(m for m in everything if m["subject"] == "moving")
    assert (moved["id"], moved["folder"], moved["state"]) == (original["id"], "archive", "synced")
    assert moved["server_folder"] == "Archive"
    # Never shown as removed on the way.
    assert [e for e in events.of_type("message.detached") if e["id"] == original["id"]] == []
    assert account.sync().status == "synced"
    assert account.synced()["moving"]["id"] == original["id"]


def test_a_deletion_waits_at_most_one_sync_while_mail_keeps_arriving(account: Account) -> None:
    with account.user.client() as imap:
        uid = imap.append("INBOX", message("deleted", days=1), internal_date=days_ago(1))
    assert account.sync().status == "synced"
    with account.user.client() as imap:
        imap.expunge("INBOX", uid)
    arrived = iter(range(100))

    def new_mail_lands() -> None:
        with account.user.client() as other:
            other.append("INBOX", message(f"busy {next(arrived)}", days=0.1), internal_date=days_ago(0.1))

    # Every sync sees mail land after its snapshot: the deletion may wait once, not for ever.
    for _ in range(2):
        readers: list[HookedReader] = []
        assert account.sync(connection_factory=hooked("INBOX", new_mail_lands, readers)).status == "synced"
        assert readers[0].fired
    messages = account.by_subject()
    assert (messages["deleted"]["state"], messages["deleted"]["detach_reason"]) == ("detached", "removed")
    # What landed after a snapshot arrives with the next sync.
    assert set(account.synced()) == {"busy 0"}
    assert account.sync().status == "synced"
    assert set(account.synced()) == {"busy 0", "busy 1"}


# --- a read/unread pending across another client's move -------------------------------------------


def test_seen_pending_across_another_clients_move_ends_in_the_servers_folder(account: Account) -> None:
    with account.user.client() as imap:
        uid = imap.append("INBOX", message("read me", days=1), internal_date=days_ago(1))
    assert account.sync().status == "synced"
    msg = account.synced()["read me"]
    with account.user.client() as other:
        other.move("INBOX", uid, "Archive")
    patched = account.api("PATCH", f"/v1/messages/{msg['id']}", {"seen": True}, caller=account.caller)
    assert patched.status == 200, patched.body

    for _ in range(3):
        assert account.sync().status == "synced"
        if account.synced()["read me"]["sync_state"] == "synced":
            break

    after = account.synced()["read me"]
    assert (after["id"], after["folder"], after["server_folder"]) == (msg["id"], "archive", "Archive")
    assert after["seen"] is True and after["sync_state"] == "synced"
    with account.user.client() as imap:
        [archived] = imap.uids("Archive")
        assert "\\Seen" in imap.flags("Archive", archived)
        assert imap.uids("INBOX") == []


# --- a message without Message-ID re-uploaded by mbsync with X-TUID ------------------------------


def test_a_message_without_message_id_reuploaded_with_x_tuid_is_relinked(account: Account, aws) -> None:
    raw = message("no id", days=1, message_id=None)
    with account.user.client() as imap:
        uid = imap.append("INBOX", raw, internal_date=days_ago(1))
    assert account.sync().status == "synced"
    original = account.synced()["no id"]
    events = capture_events(aws["EVENT_BUS_NAME"])
    # What mbsync does for a move in its Maildir: expunge here, append there with X-TUID added.
    head, _, body = raw.partition(b"\r\n\r\n")
    reuploaded = head + b"\r\nX-TUID: abc\r\n\r\n" + body
    with account.user.client() as other:
        other.expunge("INBOX", uid)
        other.append("Archive", reuploaded, internal_date=days_ago(1))
    assert account.sync().status == "synced"

    everything = account.messages()
    assert len(everything) == 1
    [moved] = everything
    assert (moved["id"], moved["folder"], moved["state"]) == (original["id"], "archive", "synced")
    assert events.of_type("message.detached") == []


# --- a mapped folder deleted on the server ------------------------------------------------------


def test_a_mapped_folder_missing_on_the_server_is_reported_and_the_others_sync(api, local_mail_env, mail_user, aws):
    with mail_user.client() as imap:
        imap.create_folder("Projects")
        imap.append("Projects", message("project mail", days=1), internal_date=days_ago(1))
    account = connect_account(api, mail_user, {"inbox": "INBOX", "archive": "Projects"})
    assert account.sync().status == "synced"
    events = capture_events(aws["EVENT_BUS_NAME"])
    with mail_user.client() as imap:
        imap.imap.delete_folder("Projects")
        imap.append("INBOX", message("still arrives", days=0.5), internal_date=days_ago(0.5))

    result = account.sync()
    assert result.status == "synced", result
    assert "still arrives" in account.synced()
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert (status["state"], status["last_error"], status["account_status"]) == ("idle", None, "ok")
    folders = {f["crm_folder"]: f for f in status["folders"]}
    assert folders["archive"]["error"] == "folder_missing"
    assert folders["inbox"]["error"] is None
    [event] = events.of_type("account.folder_missing")
    assert (event["server_folder"], event["crm_folder"], event["code"]) == ("Projects", "archive", "folder_missing")

    # Announced once, shown until the folder is back; then it syncs again.
    assert account.sync().status == "synced"
    assert events.of_type("account.folder_missing") == [event]
    with mail_user.client() as imap:
        imap.create_folder("Projects")
        imap.append("Projects", message("project is back", days=0.5), internal_date=days_ago(0.5))
    assert account.sync().status == "synced"
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert {f["crm_folder"]: f["error"] for f in status["folders"]} == {"inbox": None, "archive": None}
    assert account.synced()["project is back"]["folder"] == "archive"
