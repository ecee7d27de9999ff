"""The core scenarios on every real server the harness runs: Dovecot (full and basic flavour),
Cyrus IMAP 3.6 and Courier-IMAP 5.0. Through the API and sync jobs, as in test_two_way.py and
test_sync_engine.py: test login, folders and the folder-map suggestion, first sync, changes made
by another mail client, every CRM operation reaching the server, and sent mail.

Cyrus looks like Dovecot (altnamespace, "/" separator, SPECIAL-USE); Courier keeps its folders
under INBOX ("INBOX.Sent", "." separator) and has no SPECIAL-USE, MOVE, CONDSTORE or QRESYNC.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest

from devstack.dovecot import MailUser, make_message
from tests.conftest import ApiCall, Caller
from tests.integration.sync_support import Account, days_ago, message
from tests.integration.sync_support import server_flags as flags_of
from tests.integration.sync_support import server_subjects as subjects

SETTINGS = "/v1/users/me/mail-settings"
SERVERS = ["dovecot", "dovecot_basic", "cyrus", "courier"]
DOVECOT_FOLDERS = {"inbox": "INBOX", "sent": "Sent", "drafts": "Drafts", "trash": "Trash", "archive": "Archive"}
MAPPED = ("inbox", "sent", "archive", "trash")


@dataclass
class Target:
    """One server under test: a fresh user, and the server's names for the well-known folders."""

    server: str
    user: MailUser
    folders: dict[str, str]
    api: ApiCall
    caller: Caller

    def settings(self, **overrides: object) -> dict[str, object]:
        body: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.user.imaps_port,
            "username": self.user.username,
            "password": self.user.password,
            "security": "ssl",
            "protocol": "imap",
        }
        return body | overrides

    def connect(self, mapped: tuple[str, ...] = MAPPED) -> Account:
        """Settings and the folder map saved through the API, as the settings screen does."""
        saved = self.api("PUT", SETTINGS, self.settings(), caller=self.caller)
        assert saved.status == 201, saved.body
        folder_map = {crm: self.folders[crm] for crm in mapped}
        mapped = self.api("PUT", "/v1/users/me/folder-map", folder_map, caller=self.caller)
        assert mapped.status == 200, mapped.body
        return Account(self.api, self.user, self.caller)

    def name(self, crm: str) -> str:
        return self.folders[crm]


@pytest.fixture(params=SERVERS)
def target(request: pytest.FixtureRequest, api: ApiCall, local_mail_env, monkeypatch: pytest.MonkeyPatch) -> Target:
    from mailsync.config import get_settings

    server = request.getfixturevalue(request.param)
    folders = DOVECOT_FOLDERS if request.param.startswith("dovecot") else server.folders
    # Every server has its own test CA; trust this one's.
    monkeypatch.setenv("MAILSYNC_EXTRA_CA_FILE", str(server.ca_file))
    get_settings.cache_clear()
    return Target(request.param, server.add_user(), folders, api, Caller("alice", "acme", "user"))


# --- the other mail client ----------------------------------------------------------------------


def seed(target: Target, account: Account, *subjects_: str, crm: str = "inbox", flags=()) -> dict[str, int]:
    uids = {}
    with target.user.client() as imap:
        for subject in subjects_:
            uids[subject] = imap.append(
                target.name(crm), message(subject, days=1), flags=flags, internal_date=days_ago(1)
            )
    result = account.sync()
    assert result.status == "synced", result
    return uids


def push(account: Account) -> None:
    """The immediate job a CRM change enqueues; it must finish without an account-level error."""
    result = account.sync(reason="push")
    assert result.status == "synced", result


def assert_clean(msg: dict) -> None:
    assert (msg["sync_state"], msg.get("last_op_error")) == ("synced", None), msg


# --- test login ---------------------------------------------------------------------------------


def test_login_right_and_wrong_password(target: Target) -> None:
    api, caller = target.api, target.caller
    ok = api("POST", f"{SETTINGS}/test", target.settings(), caller=caller)
    assert ok.status == 200, ok.body
    assert "IMAP4REV1" in {c.upper() for c in ok.body["capabilities"]}

    starttls = api(
        "POST", f"{SETTINGS}/test", target.settings(security="starttls", port=target.user.imap_port), caller=caller
    )
    assert starttls.status == 200, starttls.body

    wrong = api("POST", f"{SETTINGS}/test", target.settings(password="not-the-password"), caller=caller)
    assert wrong.status == 502, wrong.body
    assert wrong.body["error"]["code"] == "auth_failed"


# --- folders ------------------------------------------------------------------------------------


def test_server_folders_and_folder_map_suggestion(target: Target) -> None:
    api, caller = target.api, target.caller
    assert api("PUT", SETTINGS, target.settings(), caller=caller).status == 201
    listed = api("GET", "/v1/users/me/server-folders", caller=caller)
    assert listed.status == 200, listed.body
    folders = {f["name"]: f for f in listed.body["folders"]}
    expected = {crm: target.name(crm) for crm in ("inbox", "sent", "drafts", "trash", "archive")}
    assert set(expected.values()) <= set(folders), sorted(folders)
    assert {name: folders[name]["suggested"] for name in expected.values()} == {
        name: crm for crm, name in expected.items()
    }
    # RFC 6154 attributes are case-insensitive (Cyrus sends "\sent"); the API shows one spelling.
    uses = {folders[name]["special_use"] for name in expected.values() if name != "INBOX"}
    assert uses <= {None, "\\Sent", "\\Drafts", "\\Trash", "\\Archive"}, uses

    suggestion = api("GET", "/v1/users/me/folder-map", caller=caller)
    assert suggestion.status == 200, suggestion.body
    assert suggestion.body["saved"] is False
    assert {crm: suggestion.body["folders"].get(crm) for crm in expected} == expected

    saved = api("PUT", "/v1/users/me/folder-map", suggestion.body["folders"], caller=caller)
    assert saved.status == 200, saved.body
    missing = api("PUT", "/v1/users/me/folder-map", {"inbox": "INBOX", "sent": "Nowhere"}, caller=caller)
    assert (missing.status, missing.body["error"]["field"]) == (422, "sent")


# --- server to CRM ------------------------------------------------------------------------------


def test_first_sync(target: Target) -> None:
    account = target.connect()
    with target.user.client() as imap:
        imap.append("INBOX", message("recent", days=2), internal_date=days_ago(2))
        imap.append("INBOX", message("old", days=40), internal_date=days_ago(40))
        imap.append(target.name("sent"), message("sent recently", days=1), flags=["\\Seen"], internal_date=days_ago(1))
        imap.append(target.name("archive"), message("filed", days=3), flags=["\\Seen"], internal_date=days_ago(3))
    result = account.sync()
    assert result.status == "synced", result

    synced = account.synced()
    assert set(synced) == {"recent", "sent recently", "filed"}
    got = {s: (m["folder"], m["server_folder"], m["seen"]) for s, m in synced.items()}
    assert got == {
        "recent": ("inbox", "INBOX", False),
        "sent recently": ("sent", target.name("sent"), True),
        "filed": ("archive", target.name("archive"), True),
    }
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert (status["state"], status["last_error"]) == ("idle", None), status
    assert {f["crm_folder"]: f["messages"] for f in status["folders"]} == {
        "inbox": 1,
        "sent": 1,
        "archive": 1,
        "trash": 0,
    }


def test_changes_by_another_client_are_picked_up(target: Target) -> None:
    account = target.connect()
    uids = seed(target, account, "flag me", "move me", "delete me")
    before = account.synced()
    with target.user.client() as imap:  # the user's other mail program
        imap.append("INBOX", message("new arrival", days=0.1), internal_date=days_ago(0.1))
        imap.add_flags("INBOX", uids["flag me"], ["\\Seen", "\\Flagged"])
        imap.move("INBOX", uids["move me"], target.name("archive"))
        imap.expunge("INBOX", uids["delete me"])
    result = account.sync()
    assert result.status == "synced", result

    after = account.by_subject()
    assert after["new arrival"]["state"] == "synced"
    assert after["flag me"]["seen"] is True and "\\Flagged" in after["flag me"]["flags"]
    moved = after["move me"]
    assert (moved["id"], moved["state"], moved["folder"], moved["server_folder"]) == (
        before["move me"]["id"],
        "synced",
        "archive",
        target.name("archive"),
    )
    assert (after["delete me"]["state"], after["delete me"]["detach_reason"]) == ("detached", "removed")
    assert len(after) == 4

    with target.user.client() as imap:
        imap.remove_flags("INBOX", uids["flag me"], ["\\Seen"])
    account.sync()
    assert account.synced()["flag me"]["seen"] is False


# --- CRM to server ------------------------------------------------------------------------------


def test_crm_read_and_unread_reach_the_server(target: Target) -> None:
    account = target.connect()
    seed(target, account, "read me", flags=["\\Flagged"])
    msg = account.synced()["read me"]
    assert account.api("PATCH", f"/v1/messages/{msg['id']}", {"seen": True}, caller=account.caller).status == 200
    push(account)
    assert flags_of(target.user, "INBOX", "read me") == {"\\Seen", "\\Flagged"}
    assert_clean(account.by_subject()["read me"])

    assert account.api("PATCH", f"/v1/messages/{msg['id']}", {"seen": False}, caller=account.caller).status == 200
    push(account)
    assert flags_of(target.user, "INBOX", "read me") == {"\\Flagged"}
    after = account.by_subject()["read me"]
    assert_clean(after)
    assert after["seen"] is False


def test_crm_move_reaches_the_server(target: Target) -> None:
    account = target.connect()
    seed(target, account, "file me")
    msg = account.synced()["file me"]
    moved = account.api("PATCH", f"/v1/messages/{msg['id']}", {"folder": "archive"}, caller=account.caller)
    assert moved.status == 200, moved.body
    push(account)
    assert subjects(target.user, "INBOX") == []
    assert subjects(target.user, target.name("archive")) == ["file me"]
    after = account.by_subject()["file me"]
    assert_clean(after)
    assert (after["id"], after["folder"], after["server_folder"]) == (msg["id"], "archive", target.name("archive"))
    account.sync()
    assert len(account.messages()) == 1, "the pull sees the moved copy as known"


def test_crm_delete_moves_to_trash(target: Target) -> None:
    account = target.connect()
    seed(target, account, "bin me")
    msg = account.synced()["bin me"]
    deleted = account.api("DELETE", f"/v1/messages/{msg['id']}", caller=account.caller)
    assert deleted.status == 202, deleted.body
    push(account)
    assert subjects(target.user, "INBOX") == []
    assert subjects(target.user, target.name("trash")) == ["bin me"]
    after = account.by_subject()["bin me"]
    assert_clean(after)
    assert after["folder"] == "trash"


def test_sent_mail_is_appended_once(target: Target) -> None:
    account = target.connect()
    raw = make_message(subject="Offer for you", date=days_ago(0.5), message_id=None)
    created = account.api(
        "POST", "/v1/users/me/messages", {"raw": base64.b64encode(raw).decode()}, caller=account.caller
    )
    assert created.status == 201, created.body
    push(account)
    sent = target.name("sent")
    assert subjects(target.user, sent) == ["Offer for you"]
    assert "\\Seen" in flags_of(target.user, sent, "Offer for you")
    account.sync()
    messages = account.messages()
    assert [(m["id"], m["sync_state"], m.get("last_op_error")) for m in messages] == [
        (created.body["id"], "synced", None)
    ]
    assert subjects(target.user, sent) == ["Offer for you"], "appended once"


def test_a_mapped_folder_deleted_on_the_server(target: Target) -> None:
    """Every server words "no such folder" its own way; the move into it fails alone, the
    folder shows folder_missing and the rest syncs. (A folder of its own: Dovecot recreates its
    special folders on the next login and Cyrus refuses to delete them.)"""
    projects = "INBOX.Projects" if target.folders["sent"].startswith("INBOX.") else "Projects"
    with target.user.client() as imap:
        imap.create_folder(projects)
    target.folders = target.folders | {"projects": projects}
    account = target.connect(("inbox", "projects"))
    seed(target, account, "to file")
    msg = account.synced()["to file"]
    assert (
        account.api("PATCH", f"/v1/messages/{msg['id']}", {"folder": "projects"}, caller=account.caller).status == 200
    )
    with target.user.client() as imap:
        imap.imap.delete_folder(projects)
        imap.append("INBOX", message("still arriving", days=0.1), internal_date=days_ago(0.1))
    push(account)

    after = account.by_subject()
    assert after["still arriving"]["state"] == "synced", "the other folders sync"
    moved = after["to file"]
    assert (moved["folder"], moved["server_folder"], moved["sync_state"]) == ("inbox", "INBOX", "failed"), moved
    assert "does not exist" in moved["last_op_error"]
    assert subjects(target.user, "INBOX") == ["still arriving", "to file"]
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert (status["state"], status["last_error"]) == ("idle", None), status
    assert {f["crm_folder"]: f["error"] for f in status["folders"]} == {"inbox": None, "projects": "folder_missing"}
