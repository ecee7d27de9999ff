"""POP3 sync against the harness's real Dovecot pop3 service (moto for AWS): the window, keep copy,
remove after N days (a clock the test controls), UIDL reuse, mail the server drops on its own,
delete only after store; and what the API does for a POP3 account (no folder map, changes and
sent mail stay in the CRM, sync-status, the schedule)."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from devstack.lambda_runtime import LambdaContext, load_handler, scheduled_event, sqs_event
from tests.conftest import ApiCall, Caller
from tests.integration.pop3_support import SETTINGS, Clock, PopAccount, deliver, maildrop, on_server, pop_account
from tests.integration.sync_support import capture_events, count_dynamodb_calls, message

START = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch, START)


def crm(account: PopAccount) -> dict[str, dict[str, Any]]:
    return account.by_subject()


# --- fetching --------------------------------------------------------------------------------------


def test_the_window_is_applied_from_the_headers_and_new_mail_lands_in_inbox(
    api: ApiCall, aws: dict[str, str], local_mail_env, mail_user, clock: Clock
) -> None:
    events = capture_events(aws["EVENT_BUS_NAME"])
    deliver(mail_user, "recent", days=1)
    deliver(mail_user, "old by date", days=40)
    deliver(mail_user, "old by received", dated=False, received_days=40)
    deliver(mail_user, "recent by received", dated=False, received_days=2)
    deliver(mail_user, "no date at all", dated=False)
    account = pop_account(api, mail_user)

    result = account.sync()

    assert result.status == "synced", result
    messages = crm(account)
    assert sorted(messages) == ["no date at all", "recent", "recent by received"]
    for m in messages.values():
        assert (m["folder"], m["state"], m["detach_reason"], m["sync_state"]) == ("inbox", "detached", "pop3", "local")
        assert m["server_folder"] == "" and m["uid"] is None
    received = events.of_type("message.received")
    assert sorted(e["id"] for e in received) == sorted(m["id"] for m in messages.values())
    # keep_copy is the default: everything stays on the server, the old mail too.
    assert len(maildrop(mail_user)) == 5
    # The raw copy is the message as the server has it.
    raw = api("GET", f"/v1/messages/{messages['recent']['id']}/raw", caller=account.caller)
    assert raw.status == 200 and raw.body["url"]


def test_a_scheduled_sync_that_finds_nothing_new_writes_nothing(
    api: ApiCall, local_mail_env, mail_user, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.sync.planner import jobs

    monkeypatch.setattr(jobs, "MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS", 0)  # polls right after each other
    deliver(mail_user, "one", days=1)
    deliver(mail_user, "too old", days=90)
    account = pop_account(api, mail_user)
    assert account.sync().status == "synced"

    with count_dynamodb_calls() as calls:
        again = account.sync(reason="schedule")
    assert again.status == "synced" and again.outcome is not None and again.outcome.created == 0
    assert dict(calls) == {"BatchGetItem": 1}, "account and state read; the listing is the last sync's"
    assert sorted(crm(account)) == ["one"]

    deliver(mail_user, "two", days=0.5)
    assert account.sync(reason="schedule").outcome.created == 1


def test_a_kept_copy_falls_due_on_a_scheduled_sync_without_any_change_on_the_server(
    api: ApiCall, local_mail_env, mail_user, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.sync.planner import jobs

    monkeypatch.setattr(jobs, "MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS", 0)
    deliver(mail_user, "kept a day", days=1)
    account = pop_account(api, mail_user, remove_after_days=1)
    assert account.sync().status == "synced"
    clock.advance(hours=23)
    assert account.sync(reason="schedule").status == "synced"
    assert on_server(mail_user) == ["kept a day"]

    clock.advance(hours=1)
    assert account.sync(reason="schedule").status == "synced"
    assert on_server(mail_user) == []


def test_keep_copy_false_deletes_each_message_once_it_is_stored_and_leaves_older_mail(
    api: ApiCall, local_mail_env, mail_user, clock: Clock
) -> None:
    deliver(mail_user, "a", days=1)
    deliver(mail_user, "b", days=2, message_id=None)
    deliver(mail_user, "ancient", days=60)
    account = pop_account(api, mail_user, keep_copy=False)

    assert account.sync().status == "synced"

    assert sorted(crm(account)) == ["a", "b"]
    assert on_server(mail_user) == ["ancient"], "never stored, so never deleted"
    # The next sync forgets the deleted UIDLs and finds nothing to do.
    deliver(mail_user, "c", days=0.5)
    assert account.sync().status == "synced"
    assert sorted(crm(account)) == ["a", "b", "c"] and on_server(mail_user) == ["ancient"]
    assert account.sync().outcome.created == 0


def test_remove_after_days_deletes_a_kept_copy_that_many_days_after_it_was_fetched(
    api: ApiCall, local_mail_env, mail_user, clock: Clock
) -> None:
    deliver(mail_user, "first", days=1)
    account = pop_account(api, mail_user, keep_copy=True, remove_after_days=7)
    assert account.sync().status == "synced"

    clock.advance(days=3)
    deliver(mail_user, "second", days=0.1)
    assert account.sync().status == "synced"
    assert on_server(mail_user) == ["first", "second"]

    clock.advance(days=4)  # 7 days after "first" was fetched, 4 after "second"
    assert account.sync().status == "synced"
    assert on_server(mail_user) == ["second"]

    clock.advance(days=2, hours=23)
    assert account.sync().status == "synced"
    assert on_server(mail_user) == ["second"], "not before its seventh day"
    clock.advance(hours=1)
    assert account.sync().status == "synced"
    assert on_server(mail_user) == []
    assert sorted(crm(account)) == ["first", "second"], "the CRM keeps what left the server"


def test_mail_the_server_drops_on_its_own_is_forgotten_not_an_error(
    api: ApiCall, local_mail_env, mail_user, clock: Clock
) -> None:
    deliver(mail_user, "kept", days=1)
    deliver(mail_user, "dropped", days=1)
    account = pop_account(api, mail_user)
    assert account.sync().status == "synced"

    with mail_user.client() as imap:  # the server's own retention, or another mail program
        uids = imap.uids("INBOX")
        imap.expunge("INBOX", uids[1:])
    result = account.sync()

    assert result.status == "synced", result
    assert sorted(crm(account)) == ["dropped", "kept"], "the CRM keeps its copy"
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert (status["state"], status["last_error"], status["account_status"]) == ("idle", None, "ok")
    [inbox] = status["folders"]
    assert (inbox["crm_folder"], inbox["server_folder"], inbox["server_messages"]) == ("inbox", "INBOX", 1)


def test_a_message_gone_between_the_listing_and_its_fetch_is_skipped(
    api: ApiCall, local_mail_env, mail_user, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.mailbox.pop import Pop3Connection

    deliver(mail_user, "stays", days=1)
    deliver(mail_user, "vanishes", days=1)
    account = pop_account(api, mail_user)
    listing = Pop3Connection.listing

    def listing_then_expunge(conn: Pop3Connection) -> Any:
        listed = listing(conn)
        with mail_user.client() as imap:  # another client, while our session is open
            imap.expunge("INBOX", imap.uids("INBOX")[1:])
        return listed

    monkeypatch.setattr(Pop3Connection, "listing", listing_then_expunge)
    result = account.sync()

    assert result.status == "synced", result
    assert sorted(crm(account)) == ["stays"]


def test_a_reused_uidl_brings_a_new_message(api: ApiCall, local_mail_env, mail_user, dovecot, clock: Clock) -> None:
    """Dovecot's UIDL is UID + UIDVALIDITY: rebuilding the mailbox with its old UIDVALIDITY hands
    the first UID, and with it the first UIDL, to another message."""
    deliver(mail_user, "before the rebuild", days=1)
    account = pop_account(api, mail_user, keep_copy=True)
    assert account.sync().status == "synced"
    [uidl_before] = maildrop(mail_user)
    rebuild_mailbox(dovecot, mail_user)
    deliver(mail_user, "after the rebuild", days=1, body="another message, another size entirely\n" * 3)
    assert list(maildrop(mail_user)) == [uidl_before], "the server reuses the UIDL"

    assert account.sync().status == "synced"

    assert sorted(crm(account)) == ["after the rebuild", "before the rebuild"]
    assert account.sync().outcome.created == 0


def rebuild_mailbox(dovecot: Any, user: Any) -> None:
    """Empty INBOX and give it back its UIDVALIDITY with UIDs starting at 1 again."""
    old = dovecot.uidvalidity(user.username, "INBOX")
    with user.client() as imap:
        imap.expunge("INBOX", imap.uids("INBOX"))
    inbox = Path(dovecot.mail_dir) / user.username / "Maildir"
    for path in inbox.glob("dovecot*"):
        if path.is_file():
            path.unlink()
    dovecot.doveadm("mailbox", "update", "-u", user.username, "--uid-validity", str(old), "INBOX")
    assert dovecot.uidvalidity(user.username, "INBOX") == old


# --- the API for a POP3 account -------------------------------------------------------------------


def test_folder_map_routes_answer_409_naming_the_reason(api: ApiCall, local_mail_env, mail_user) -> None:
    account = pop_account(api, mail_user)
    for method, body in (("GET", None), ("PUT", {"inbox": "INBOX"})):
        answer = api(method, "/v1/users/me/folder-map", body, caller=account.caller)
        assert answer.status == 409, answer.body
        error = answer.body["error"]
        assert (error["code"], error["field"]) == ("conflict", "protocol")
        assert "POP3 has no folders" in error["message"]


def test_changes_and_sent_mail_stay_in_the_crm(
    api: ApiCall, aws: dict[str, str], local_mail_env, mail_user, clock
) -> None:
    deliver(mail_user, "fetched", days=1)
    account = pop_account(api, mail_user)
    assert account.sync().status == "synced"
    fetched = crm(account)["fetched"]
    before = maildrop(mail_user)
    queue = aws["SYNC_QUEUE_URL"]
    boto3.client("sqs").purge_queue(QueueUrl=queue)

    read = api("PATCH", f"/v1/messages/{fetched['id']}", {"seen": True, "folder": "archive"}, caller=account.caller)
    assert read.status == 200, read.body
    assert (read.body["seen"], read.body["folder"], read.body["sync_state"]) == (True, "archive", "local")
    trashed = api("DELETE", f"/v1/messages/{fetched['id']}", caller=account.caller)
    assert trashed.status == 202 and trashed.body["folder"] == "trash", trashed.body

    raw = base64.b64encode(message("written in the crm", days=0)).decode()
    sent = api("POST", "/v1/users/me/messages", {"raw": raw}, caller=account.caller)
    assert sent.status == 201, sent.body
    assert (sent.body["folder"], sent.body["sync_state"], sent.body["detach_reason"]) == ("sent", "local", "pop3")
    assert sent.body["seen"] is True
    again = api("POST", "/v1/users/me/messages", {"raw": raw}, caller=account.caller)
    assert (again.status, again.body["id"]) == (201, sent.body["id"]), "a retry stores nothing twice"

    assert maildrop(mail_user) == before, "nothing reached the server"
    assert (
        boto3.client("sqs").get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"
        ]["ApproximateNumberOfMessages"]
        == "0"
    ), "nothing queued for the server"
    assert account.sync().status == "synced"
    assert crm(account)["fetched"]["folder"] == "trash", "a sync does not undo a CRM change"


def test_another_users_pop3_mail_cannot_be_changed(api: ApiCall, local_mail_env, mail_user, dovecot, clock) -> None:
    deliver(mail_user, "alice's", days=1)
    alice = pop_account(api, mail_user)
    assert alice.sync().status == "synced"
    bob = pop_account(api, dovecot.add_user(), who="bob")
    target = crm(alice)["alice's"]["id"]
    answer = api("PATCH", f"/v1/messages/{target}", {"seen": True}, caller=bob.caller)
    assert answer.status in (403, 404), answer.body
    assert crm(alice)["alice's"]["seen"] is False


def test_remove_after_days_is_refused_where_it_means_nothing(api: ApiCall, local_mail_env, mail_user) -> None:
    body = {"host": "127.0.0.1", "username": "u", "password": "p", "protocol": "pop3", "keep_copy": False}
    answer = api("PUT", SETTINGS, body | {"remove_after_days": 7}, caller=Caller("carol", "acme", "user"))
    assert (answer.status, answer.body["error"]["field"]) == (422, "remove_after_days"), answer.body


# --- the schedule --------------------------------------------------------------------------------


def test_the_scheduler_enqueues_pop3_accounts_and_the_worker_syncs_them(
    api: ApiCall, aws: dict[str, str], local_mail_env, mail_user, clock: Clock
) -> None:
    deliver(mail_user, "via the schedule", days=1)
    account = pop_account(api, mail_user)
    boto3.client("sqs").purge_queue(QueueUrl=aws["SYNC_QUEUE_URL"])

    result = load_handler("scheduler")(scheduled_event(), LambdaContext(function_name="SchedulerFunction"))
    assert result == {"enqueued": 1}
    got = boto3.client("sqs").receive_message(QueueUrl=aws["SYNC_QUEUE_URL"], MaxNumberOfMessages=10)["Messages"]
    records = [{"MessageId": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"], "Body": m["Body"]} for m in got]
    assert [json.loads(r["Body"]).get("accounts") for r in records] == [[["acme", "alice"]]]
    event = sqs_event(records, "arn:aws:sqs:eu-west-1:123456789012:mailsync-local-SyncQueue")
    worker = load_handler("sync_worker")(event, LambdaContext(function_name="SyncWorkerFunction"))

    assert worker == {"batchItemFailures": []}
    assert sorted(crm(account)) == ["via the schedule"]
    status = api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert status["state"] == "idle" and status["last_success_at"] is not None
    assert status["folders"][0]["messages"] == 1
    assert api("POST", "/v1/users/me/sync", caller=account.caller).status == 202


def test_a_wrong_password_is_auth_failed_and_leaves_the_schedule(
    api: ApiCall, local_mail_env, mail_user, clock: Clock
) -> None:
    account = pop_account(api, mail_user)
    account.user = dataclasses.replace(mail_user, password="wrong")
    saved = api("PUT", SETTINGS, account.settings_body(), caller=account.caller)
    assert saved.status == 200, saved.body

    result = account.sync()

    assert (result.status, result.error) == ("failed", "auth_failed")
    settings = api("GET", SETTINGS, caller=account.caller).body
    assert settings["status"] == "auth_failed"
    status = api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert status["state"] != "syncing"


def test_stls_on_the_plain_port_syncs_too(api: ApiCall, local_mail_env, mail_user, clock: Clock) -> None:
    deliver(mail_user, "over stls", days=1)
    account = pop_account(api, mail_user, port=mail_user.pop3_port, security="starttls")
    assert api("GET", SETTINGS, caller=account.caller).body["port"] == mail_user.pop3_port

    assert account.sync().status == "synced"
    assert sorted(crm(account)) == ["over stls"]


def test_fetches_per_job_are_bounded_and_a_continuation_takes_the_rest(
    api: ApiCall, aws: dict[str, str], local_mail_env, mail_user, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.sync.planner import pop

    monkeypatch.setattr(pop, "MAX_FETCHES_PER_JOB", 2)
    for i in range(3):
        deliver(mail_user, f"message {i}", days=1)
    account = pop_account(api, mail_user, keep_copy=False)
    boto3.client("sqs").purge_queue(QueueUrl=aws["SYNC_QUEUE_URL"])

    first = account.sync()

    assert first.status == "incomplete" and first.outcome.created == 2
    got = boto3.client("sqs").receive_message(QueueUrl=aws["SYNC_QUEUE_URL"], MaxNumberOfMessages=10)["Messages"]
    assert [json.loads(m["Body"])["reason"] for m in got] == ["continue"]
    assert account.sync(reason="continue").status == "synced"
    assert sorted(crm(account)) == ["message 0", "message 1", "message 2"] and on_server(mail_user) == []


def test_a_message_over_the_size_cap_is_stored_from_its_headers(
    api: ApiCall, local_mail_env, mail_user, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_MAX_MESSAGE_BYTES", "4096")
    get_settings.cache_clear()
    deliver(mail_user, "big", days=1, body="0123456789abcdef\n" * 1000)
    deliver(mail_user, "small", days=1)
    account = pop_account(api, mail_user)

    assert account.sync().status == "synced"

    messages = crm(account)
    assert (messages["big"]["too_large"], messages["small"]["too_large"]) == (True, False)
    assert messages["big"]["size"] > 16_000, "the size the server listed, not the headers' size"


def test_a_message_that_came_by_relay_is_not_stored_again_from_pop3(
    api: ApiCall, local_mail_env, mail_user, clock: Clock
) -> None:
    from mailsync.domain import RelayVerdicts
    from mailsync.services import relay

    raw = deliver(mail_user, "relayed and fetched", days=1)
    assert relay.store_message("acme", "alice", raw, "ses-message-1", RelayVerdicts(spam="PASS"), START)
    account = pop_account(api, mail_user, keep_copy=False)

    assert account.sync().status == "synced"

    [one] = account.messages()
    assert (one["subject"], one["detach_reason"]) == ("relayed and fetched", "relayed")
    assert on_server(mail_user) == [], "the CRM holds it: it left the server"


def test_pop3_mail_follows_the_confidentiality_rules_and_fills_the_dossiers(
    api: ApiCall, local_mail_env, mail_user, dovecot, clock: Clock
) -> None:
    deliver(mail_user, "for the dossier", days=1)
    alice = pop_account(api, mail_user)
    assert alice.sync().status == "synced"
    other = dovecot.add_user()
    deliver(other, "private", days=1)
    bob = pop_account(api, other, who="bob", incoming_confidential=True)
    assert bob.sync().status == "synced"

    assert crm(bob)["private"]["confidential"] is True
    dossier = api("GET", "/v1/contacts/alice@example.com/messages", caller=alice.caller).body["messages"]
    assert [(m["subject"], m["owner"]) for m in dossier] == [("for the dossier", "alice")], "bob's is confidential"


def test_a_pop3_sync_with_work_waits_for_a_slot_like_imap_and_without_one_goes_back_on_the_queue(
    api: ApiCall, aws: dict[str, str], local_mail_env, mail_user, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from mailsync import dal
    from mailsync.services import sync_jobs

    deliver(mail_user, "new", days=1)
    account = pop_account(api, mail_user)
    sqs = boto3.client("sqs")
    sqs.purge_queue(QueueUrl=aws["SYNC_QUEUE_URL"])
    taken = threading.BoundedSemaphore(1)
    taken.acquire()  # the process's syncs with work fill every slot
    monkeypatch.setattr(sync_jobs, "_WORK_SLOTS", taken)
    monkeypatch.setattr(sync_jobs, "HOST_WAIT_SECONDS", 0.2)
    monkeypatch.setattr(sync_jobs, "HOST_BUSY_DELAY_SECONDS", 0)

    assert account.sync().status == "busy"
    assert crm(account) == {}
    state = dal.get_sync_state("acme", account.caller.user)
    assert state is None or (state.state != "syncing" and state.lease_owner is None)
    got = sqs.receive_message(QueueUrl=aws["SYNC_QUEUE_URL"], MaxNumberOfMessages=10, WaitTimeSeconds=0)
    assert [json.loads(m["Body"])["user_id"] for m in got.get("Messages", [])] == [account.caller.user]

    taken.release()
    assert account.sync().status == "synced"
    assert sorted(crm(account)) == ["new"]
