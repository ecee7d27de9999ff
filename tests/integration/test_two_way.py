"""CRM to server against the real Dovecot, both flavours: read/unread, moves, sent mail,
conflicts and crash reruns."""

from __future__ import annotations

import base64

import pytest

from devstack.dovecot import make_message
from tests.integration.sync_support import (
    Account,
    capture_events,
    days_ago,
    flavoured_account,
    message,
    server_flags,
    server_subjects,
)

FULL_MAP = {"inbox": "INBOX", "sent": "Sent", "archive": "Archive", "trash": "Trash"}


@pytest.fixture(params=["full", "basic"])
def account(request, api, local_mail_env, monkeypatch) -> Account:
    return flavoured_account(request, api, monkeypatch, FULL_MAP)


def patch(account: Account, message_id: str, **body):
    return account.api("PATCH", f"/v1/messages/{message_id}", body, caller=account.caller)


def seed(account: Account, *subjects: str, folder: str = "INBOX", flags=()) -> dict[str, int]:
    uids = {}
    with account.user.client() as imap:
        for subject in subjects:
            uids[subject] = imap.append(folder, message(subject, days=1), flags=flags, internal_date=days_ago(1))
    account.sync()
    return uids


def test_mark_read_and_unread_keeps_other_flags(account: Account, aws) -> None:
    seed(account, "read me", flags=["\\Flagged", "$Label1"])
    msg = account.synced()["read me"]
    response = patch(account, msg["id"], seen=True)
    assert response.status == 200, response.body
    assert (response.body["seen"], response.body["sync_state"]) == (True, "pending")
    events = capture_events(aws["EVENT_BUS_NAME"])
    account.sync(reason="push")
    assert server_flags(account, "INBOX", "read me") == {"\\Seen", "\\Flagged", "$Label1"}
    after = account.synced()["read me"]
    assert (after["seen"], after["sync_state"]) == (True, "synced")
    [event] = events.of_type("message.updated")
    assert (event["id"], event["origin"], event["changes"]["seen"]) == (msg["id"], "crm", True)

    patch(account, msg["id"], seen=False)
    account.sync(reason="push")
    assert server_flags(account, "INBOX", "read me") == {"\\Flagged", "$Label1"}
    assert account.synced()["read me"]["seen"] is False


def test_patch_enqueues_an_immediate_sync(account: Account, aws) -> None:
    import json

    import boto3

    seed(account, "soon")
    msg = account.synced()["soon"]
    patch(account, msg["id"], seen=True)
    got = boto3.client("sqs").receive_message(QueueUrl=aws["SYNC_QUEUE_URL"], MaxNumberOfMessages=10)
    assert [json.loads(m["Body"])["reason"] for m in got["Messages"]] == ["push"]


def test_move_in_the_crm_moves_on_the_server(account: Account) -> None:
    seed(account, "file me")
    msg = account.synced()["file me"]
    response = patch(account, msg["id"], folder="archive")
    assert response.body["folder"] == "archive" and response.body["sync_state"] == "pending"
    account.sync(reason="push")
    assert server_subjects(account, "INBOX") == []
    assert server_subjects(account, "Archive") == ["file me"]
    after = account.by_subject()["file me"]
    assert (after["id"], after["folder"], after["server_folder"], after["sync_state"]) == (
        msg["id"],
        "archive",
        "Archive",
        "synced",
    )
    account.sync()
    assert len(account.messages()) == 1, "the pull sees the moved copy as known"


def test_delete_moves_to_trash_or_409_without_trash(account: Account) -> None:
    seed(account, "bin me")
    msg = account.synced()["bin me"]
    response = account.api("DELETE", f"/v1/messages/{msg['id']}", caller=account.caller)
    assert response.status == 202 and response.body["folder"] == "trash"
    account.sync(reason="push")
    assert server_subjects(account, "Trash") == ["bin me"]
    account.api("PUT", "/v1/users/me/folder-map", {"inbox": "INBOX", "sent": "Sent"}, caller=account.caller)
    seed(account, "no trash")
    other = account.synced()["no trash"]
    refused = account.api("DELETE", f"/v1/messages/{other['id']}", caller=account.caller)
    assert refused.status == 409 and "trash" in refused.body["error"]["message"]


def test_send_appends_to_sent_with_seen_and_date(account: Account) -> None:
    raw = make_message(subject="Offer for you", date=days_ago(0.5), message_id=None)
    body = {"raw": base64.b64encode(raw).decode()}
    response = account.api("POST", "/v1/users/me/messages", body, caller=account.caller)
    assert response.status == 201, response.body
    created = response.body
    assert (created["folder"], created["sync_state"], created["seen"]) == ("sent", "pending", True)
    assert created["internet_message_id"], "a Message-ID was added"
    account.sync(reason="push")
    assert server_subjects(account, "Sent") == ["Offer for you"]
    assert "\\Seen" in server_flags(account, "Sent", "Offer for you")
    with account.user.client() as imap:
        [uid] = imap.uids("Sent")
        assert abs((imap.internal_date("Sent", uid) - days_ago(0.5)).total_seconds()) < 120
    account.sync()
    messages = account.messages()
    assert [(m["id"], m["sync_state"]) for m in messages] == [(created["id"], "synced")]


def test_send_links_a_copy_the_server_saved_itself(account: Account) -> None:
    raw = make_message(subject="Saved by the server", date=days_ago(0.2))
    with account.user.client() as imap:
        imap.append("Sent", raw, flags=["\\Seen"], internal_date=days_ago(0.2))
    response = account.api(
        "POST", "/v1/users/me/messages", {"raw": base64.b64encode(raw).decode()}, caller=account.caller
    )
    assert response.status == 201
    account.sync(reason="push")
    assert server_subjects(account, "Sent") == ["Saved by the server"], "no second copy"
    assert [m["id"] for m in account.messages()] == [response.body["id"]]


def test_send_validation(account: Account) -> None:
    bad = account.api("POST", "/v1/users/me/messages", {"raw": "not base64!"}, caller=account.caller)
    assert (bad.status, bad.body["error"]["field"]) == (422, "raw")
    unmapped = account.api(
        "POST",
        "/v1/users/me/messages",
        {"raw": base64.b64encode(b"Subject: x\r\n\r\nx").decode(), "folder": "drafts"},
        caller=account.caller,
    )
    assert (unmapped.status, unmapped.body["error"]["field"]) == (422, "folder")


def test_patch_validation_and_ownership(account: Account) -> None:
    from tests.conftest import Caller

    seed(account, "mine")
    msg = account.synced()["mine"]
    assert patch(account, msg["id"]).status == 422
    assert patch(account, msg["id"], folder="nowhere").body["error"]["field"] == "folder"
    assert patch(account, msg["id"], seen="maybe").status == 422
    admin = account.api("PATCH", f"/v1/messages/{msg['id']}", {"seen": True}, caller=Caller("root", "acme", "admin"))
    assert admin.status == 403
    other = account.api("PATCH", f"/v1/messages/{msg['id']}", {"seen": True}, caller=Caller("eve", "globex"))
    assert other.status == 404


def test_both_sides_changed_seen_the_crm_wins_other_changes_merge(account: Account) -> None:
    uids = seed(account, "conflict")
    msg = account.synced()["conflict"]
    patch(account, msg["id"], seen=True)
    with account.user.client() as imap:  # another mail program, meanwhile
        imap.add_flags("INBOX", uids["conflict"], ["\\Flagged"])
        imap.remove_flags("INBOX", uids["conflict"], ["\\Seen"])
    account.sync(reason="push")
    assert server_flags(account, "INBOX", "conflict") == {"\\Seen", "\\Flagged"}
    after = account.synced()["conflict"]
    assert after["seen"] is True and "\\Flagged" in after["flags"]


def test_crm_move_of_a_message_the_server_moved_meanwhile(account: Account) -> None:
    uids = seed(account, "wanderer")
    msg = account.synced()["wanderer"]
    patch(account, msg["id"], folder="trash")
    with account.user.client() as imap:
        imap.move("INBOX", uids["wanderer"], "Archive")
    account.sync(reason="push")
    assert server_subjects(account, "Archive") == []
    assert server_subjects(account, "Trash") == ["wanderer"]
    after = account.by_subject()["wanderer"]
    assert (after["id"], after["folder"], after["sync_state"]) == (msg["id"], "trash", "synced")


def test_op_on_a_message_removed_from_the_server_is_dropped(account: Account) -> None:
    uids = seed(account, "doomed")
    msg = account.synced()["doomed"]
    patch(account, msg["id"], seen=True)
    with account.user.client() as imap:
        imap.expunge("INBOX", uids["doomed"])
    account.sync(reason="push")
    after = account.by_subject()["doomed"]
    assert (after["state"], after["detach_reason"], after["sync_state"]) == ("detached", "removed", "synced")
    assert "removed from the mail server" in after["last_op_error"]
    assert patch(account, msg["id"], seen=False).status == 409


def test_move_after_a_crash_between_copy_and_expunge(account: Account) -> None:
    """Without MOVE a move is COPY + EXPUNGE; a crash in between leaves a copy in the target."""
    with account.user.client() as imap:
        if imap.has("MOVE"):
            pytest.skip("MOVE is atomic: there is no half-done move on this flavour")
    uids = seed(account, "half moved")
    msg = account.synced()["half moved"]
    patch(account, msg["id"], folder="archive")
    with account.user.client() as imap:  # what the crashed attempt left behind
        imap.imap.select_folder("INBOX")
        imap.imap.copy([uids["half moved"]], "Archive")
    account.sync(reason="push")
    account.sync()
    assert server_subjects(account, "INBOX") == []
    assert server_subjects(account, "Archive") == ["half moved"]
    assert [m["id"] for m in account.messages()] == [msg["id"]]
