"""CRM operations that cannot be applied never wedge an account (issue 9, findings 3, 4, 12a).

A refusal (NO/BAD) fails that operation alone: the message shows the server's truth again,
says why (``last_op_error``, ``sync_state: failed``), a ``message.sync_failed`` event goes out,
and the other operations and the pull go on. Transient failures are retried a bounded number
of times. Stored UIDs are never used under another UIDVALIDITY. Against the real Dovecot;
refusals Dovecot never gives (Courier's NO to APPEND into an EXAMINEd box, over quota) come
from a line proxy in front of it that answers NO instead of forwarding those commands.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from devstack.dovecot import make_message
from mailsync.sync.planner import jobs as policy
from tests.fixtures.tcp_proxy import Cut, TcpProxy
from tests.integration.sync_support import (
    Account,
    capture_events,
    connect_account,
    days_ago,
    flavoured_account,
    message,
)
from tests.integration.sync_support import server_flags as flags_of
from tests.integration.sync_support import server_subjects as subjects_in
from tests.integration.test_mailbox_writer import RefusingProxy

MAP = {"inbox": "INBOX", "sent": "Sent", "archive": "Archive", "trash": "Trash"}
FULL_MAP = MAP | {"projects": "Projects"}


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(policy, "RETRY_BASE_DELAY_SECONDS", 0)


@pytest.fixture(params=["full", "basic"])
def account(request, api, local_mail_env, monkeypatch) -> Account:
    # "Projects" is a folder of the user's own: Dovecot re-creates its special-use folders
    # (Archive, Trash, ...) on access, so only this one can really go missing.
    user = request.getfixturevalue("mail_user" if request.param == "full" else "mail_user_basic")
    with user.client() as imap:
        imap.create_folder("Projects")
    return flavoured_account(request, api, monkeypatch, FULL_MAP)


def patch(account: Account, message_id: str, **body):
    response = account.api("PATCH", f"/v1/messages/{message_id}", body, caller=account.caller)
    assert response.status == 200, response.body
    return response.body


def send(account: Account, subject: str) -> dict:
    raw = make_message(subject=subject, date=days_ago(0.1))
    response = account.api(
        "POST", "/v1/users/me/messages", {"raw": base64.b64encode(raw).decode()}, caller=account.caller
    )
    assert response.status == 201, response.body
    return response.body


def seed(account: Account, *subjects: str, folder: str = "INBOX", flags=()) -> dict[str, int]:
    with account.user.client() as imap:
        return {s: imap.append(folder, message(s), flags=flags, internal_date=days_ago(1)) for s in subjects}


def sync_state(account: Account) -> dict:
    from mailsync import dal

    state = dal.get_sync_state(account.tenant, account.caller.user)
    assert state is not None
    return {"state": state.state, "ops_pending": int(state.ops_pending or 0), "lease": state.lease_owner}


@pytest.fixture
def plain_text(monkeypatch: pytest.MonkeyPatch, local_mail_env) -> None:
    """The refusing proxy speaks plain IMAP (it reads the commands)."""
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_ALLOW_INSECURE", "true")
    get_settings.cache_clear()


def through(account: Account, proxy: RefusingProxy) -> None:
    body = account.settings_body() | {"port": proxy.port, "security": "none"}
    saved = account.api("PUT", "/v1/users/me/mail-settings", body, caller=account.caller)
    assert saved.status == 200, saved.body


@pytest.fixture
def refusing(account: Account, plain_text) -> Iterator[RefusingProxy]:
    proxy = RefusingProxy(account.user, courier=True, refuse_append={"Sent": b"NO [OVERQUOTA] Quota exceeded"})
    through(account, proxy)
    yield proxy
    proxy.close()


# -- finding 3: one refused operation -------------------------------------------------------


def test_a_refused_append_fails_that_op_only_and_the_pull_goes_on(account: Account, refusing, aws) -> None:
    seed(account, "read me")
    account.sync()
    read_me = account.synced()["read me"]
    sent = send(account, "over quota")
    patch(account, read_me["id"], seen=True)
    seed(account, "new mail")
    events = capture_events(aws["EVENT_BUS_NAME"])

    result = account.sync(reason="push")

    assert (result.status, result.error) == ("synced", None)
    assert refusing.refused == [b"SENT"], "the APPEND was refused, once: no retry of a refusal"
    messages = account.by_subject()
    assert set(messages) == {"read me", "over quota", "new mail"}, "the pull went on"
    assert "\\Seen" in flags_of(account, "INBOX", "read me"), "the other op went on"
    failed = messages["over quota"]
    assert (failed["id"], failed["folder"], failed["uid"]) == (sent["id"], "sent", None)
    assert "Quota exceeded" in failed["last_op_error"]
    assert failed["sync_state"] == "failed"
    assert subjects_in(account, "Sent") == []
    [event] = events.of_type("message.sync_failed")
    assert (event["id"], event["op"], event["code"]) == (sent["id"], "append", "server_refused")
    assert "Quota exceeded" in event["error"]
    status = account.api("GET", "/v1/users/me/mail-settings", caller=account.caller).body["status"]
    assert status == "ok"
    assert sync_state(account) == {"state": "idle", "ops_pending": 0, "lease": None}
    assert account.sync().status == "synced"


def test_append_after_looking_in_the_examined_sent_folder_courier(account: Account, refusing, aws) -> None:
    """Finding 3 as Courier shows it: the pusher EXAMINEs Sent to look for the message, then
    APPENDs into Sent; Courier refuses that while the box is selected read-only."""
    refusing.refuse_append = {}
    sent = send(account, "to Courier")
    result = account.sync(reason="push")
    assert (result.status, result.error) == ("synced", None)
    assert refusing.refused == []
    assert subjects_in(account, "Sent") == ["to Courier"]
    after = account.by_subject()["to Courier"]
    assert (after["id"], after["sync_state"], after["server_folder"]) == (sent["id"], "synced", "Sent")
    assert after["uid"] is not None


def test_a_mapped_folder_deleted_on_the_server_fails_the_ops_not_the_account(account: Account, aws) -> None:
    seed(account, "to file")
    seed(account, "filed", folder="Projects")
    account.sync()
    msgs = account.synced()
    to_file, filed = msgs["to file"], msgs["filed"]
    patch(account, to_file["id"], folder="projects")
    patch(account, filed["id"], seen=True)
    with account.user.client() as imap:
        imap.imap.delete_folder("Projects")
    seed(account, "still arriving")
    events = capture_events(aws["EVENT_BUS_NAME"])

    result = account.sync(reason="push")

    assert (result.status, result.error) == ("synced", None)
    messages = account.by_subject()
    assert "still arriving" in messages, "the other folders sync"
    moved = messages["to file"]
    # The move failed: the message shows where it is on the server again.
    assert (moved["folder"], moved["server_folder"], moved["sync_state"]) == ("inbox", "INBOX", "failed")
    assert "'Projects' does not exist" in moved["last_op_error"]
    assert subjects_in(account, "INBOX") == ["still arriving", "to file"]
    seen = messages["filed"]
    assert (seen["seen"], seen["sync_state"]) == (False, "failed"), "back to the server's flags"
    assert "\\Seen" not in seen["flags"]
    failures = {e["id"]: (e["op"], e["code"]) for e in events.of_type("message.sync_failed")}
    assert failures == {to_file["id"]: ("move", "folder_missing"), filed["id"]: ("seen", "folder_missing")}
    assert sync_state(account)["ops_pending"] == 0
    assert account.api("GET", "/v1/users/me/mail-settings", caller=account.caller).body["status"] == "ok"


def test_a_failed_op_on_one_message_leaves_its_later_ops_and_others_alone(account: Account) -> None:
    """A move refused (target deleted) is followed by a read mark on the same message and a
    move of another message to a folder that exists: both still apply."""
    seed(account, "first", "second")
    account.sync()
    msgs = account.synced()
    patch(account, msgs["first"]["id"], folder="projects")
    patch(account, msgs["first"]["id"], seen=True)
    patch(account, msgs["second"]["id"], folder="trash")
    with account.user.client() as imap:
        imap.imap.delete_folder("Projects")
    assert account.sync(reason="push").status == "synced"
    after = account.by_subject()
    assert (after["first"]["folder"], after["first"]["seen"]) == ("inbox", True)
    assert "\\Seen" in flags_of(account, "INBOX", "first")
    assert (after["second"]["folder"], after["second"]["sync_state"]) == ("trash", "synced")
    assert subjects_in(account, "Trash") == ["second"]


# -- finding 4: never a stored UID under another UIDVALIDITY --------------------------------------


def test_pending_ops_after_a_rebuild_go_to_the_right_messages(account: Account) -> None:
    """The user deletes B (UID 2) and marks A unread while the server is away; the folder comes
    back rebuilt with a new UIDVALIDITY, where UID 2 is now C ("keep!")."""
    raws = {s: message(s) for s in ("A", "B", "C signed contract - keep")}
    with account.user.client() as imap:
        assert [imap.append("Projects", raws[s], flags=["\\Seen"], internal_date=days_ago(1)) for s in "AB"] == [1, 2]
    account.sync()
    msgs = account.synced()
    a, b = msgs["A"], msgs["B"]
    assert account.api("DELETE", f"/v1/messages/{b['id']}", caller=account.caller).status == 202
    patch(account, a["id"], seen=False)
    with account.user.client() as imap:
        before = imap.uidvalidity("Projects")
        imap.imap.delete_folder("Projects")
        imap.create_folder("Projects")
        for subject in ("B", "C signed contract - keep", "A"):
            imap.append("Projects", raws[subject], flags=["\\Seen"], internal_date=days_ago(1))
        assert imap.uidvalidity("Projects") != before
        assert imap.uids("Projects") == [1, 2, 3]

    assert account.sync(reason="push").status == "synced"

    assert subjects_in(account, "Trash") == ["B"]
    assert subjects_in(account, "Projects") == ["A", "C signed contract - keep"]
    assert flags_of(account, "Projects", "C signed contract - keep") == {"\\Seen"}
    assert flags_of(account, "Projects", "A") == set(), "A's unread went to A"
    after = account.by_subject()
    assert (after["A"]["id"], after["A"]["seen"], after["A"]["sync_state"]) == (a["id"], False, "synced")
    assert (after["B"]["id"], after["B"]["folder"], after["B"]["server_folder"]) == (b["id"], "trash", "Trash")
    assert after["C signed contract - keep"]["folder"] == "projects"
    account.sync()
    assert len(account.messages()) == 3


# -- finding 12a: a read mark pending across another client's move ----------------------------


def test_read_mark_pending_across_another_clients_move_ends_in_the_new_folder(account: Account) -> None:
    uids = seed(account, "moved elsewhere")
    account.sync()
    msg = account.synced()["moved elsewhere"]
    patch(account, msg["id"], seen=True)
    with account.user.client() as imap:  # another mail program, before the next poll
        imap.move("INBOX", uids["moved elsewhere"], "Archive")
    assert account.sync(reason="push").status == "synced"
    after = account.by_subject()["moved elsewhere"]
    assert (after["id"], after["folder"], after["server_folder"]) == (msg["id"], "archive", "Archive")
    assert (after["seen"], after["sync_state"]) == (True, "synced")
    assert "\\Seen" in flags_of(account, "Archive", "moved elsewhere")
    account.sync()
    assert account.by_subject()["moved elsewhere"]["folder"] == "archive"


def test_a_pending_move_keeps_its_folder_across_another_clients_move(account: Account) -> None:
    uids = seed(account, "two movers")
    account.sync()
    msg = account.synced()["two movers"]
    patch(account, msg["id"], seen=True)
    patch(account, msg["id"], folder="trash")
    with account.user.client() as imap:
        imap.move("INBOX", uids["two movers"], "Archive")
    assert account.sync(reason="push").status == "synced"
    after = account.by_subject()["two movers"]
    assert (after["folder"], after["server_folder"], after["seen"]) == ("trash", "Trash", True)
    assert subjects_in(account, "Archive") == []


# -- transient failures: bounded, counted on the op ----------------------------------------------


BIG = "".join(f"line {i:05d} of a message that is long enough to be cut while it is sent\n" for i in range(2000))


def test_an_append_that_always_loses_the_connection_fails_after_bounded_attempts(
    api, local_mail_env, mail_user, aws
) -> None:
    from mailsync.sync.planner.ops import OP_ATTEMPTS

    with TcpProxy(mail_user.host, mail_user.imaps_port) as proxy:
        account = connect_account(api, mail_user, MAP)
        saved = api(
            "PUT", "/v1/users/me/mail-settings", account.settings_body() | {"port": proxy.port}, caller=account.caller
        )
        assert saved.status == 200, saved.body
        seed(account, "fine")
        account.sync()
        fine = account.synced()["fine"]
        raw = make_message(subject="poison append", date=days_ago(0.1), body=BIG)
        sent = account.api(
            "POST", "/v1/users/me/messages", {"raw": base64.b64encode(raw).decode()}, caller=account.caller
        ).body
        patch(account, fine["id"], seen=True)
        # Every connection is cut in the middle of the APPEND literal (the only large thing the
        # worker sends): the server never gets the message.
        proxy.arm(Cut.after_client_bytes(len(raw) // 2 + 5_000, times=None))

        first = account.sync(reason="push")
        assert (first.status, first.error) == ("failed", "connect_failed")
        assert account.by_subject()["poison append"]["sync_state"] == "pending"
        results = [account.sync(reason="push") for _ in range(OP_ATTEMPTS)]
        assert results[-1].status == "synced"
        assert sum(r.status == "failed" for r in results) <= 1, "the op fails for good after its attempts"
        proxy.disarm()

    after = account.by_subject()
    failed = after["poison append"]
    assert (failed["id"], failed["sync_state"], failed["uid"]) == (sent["id"], "failed", None)
    assert f"after {OP_ATTEMPTS} attempts" in failed["last_op_error"]
    assert after["fine"]["seen"] is True
    assert sync_state(account)["ops_pending"] == 0
    with account.user.client() as imap:
        assert imap.uids("Sent") == []


def test_an_unexpected_exception_fails_the_job_with_backoff_a_metric_and_no_lease(
    api, local_mail_env, mail_user, aws, monkeypatch, capsys
) -> None:
    import json
    import time

    from devstack.lambda_runtime import LambdaContext, load_handler, sqs_event
    from mailsync import dal
    from mailsync.observability import metrics
    from mailsync.sync import engine

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setattr(metrics, "metrics_disabled", False, raising=False)
    account = connect_account(api, mail_user, MAP)
    seed(account, "m")
    working = engine.AccountSync.run

    def broken(self):
        raise KeyError("internal detail 0xdeadbeef")

    monkeypatch.setattr(engine.AccountSync, "run", broken)
    body = json.dumps({"tenant_id": "acme", "user_id": "alice", "reason": "user"})
    event = sqs_event([{"MessageId": "m1", "ReceiptHandle": "r", "Body": body}], "arn:aws:sqs:eu-west-1:1:q")
    capsys.readouterr()
    result = load_handler("sync_worker")(event, LambdaContext(function_name="SyncWorkerFunction"))

    # Handled, not thrown back at SQS: the account's own backoff decides when to try again.
    assert result == {"batchItemFailures": []}
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    emitted = {k for blob in blobs for k in blob if not k.startswith("_")}
    assert {"Sync_failed", "SyncFailures_internal_error"} <= emitted
    state = dal.get_sync_state(account.tenant, account.caller.user)
    assert (state.state, state.lease_owner) == ("failed", None)
    assert "internal error" in state.last_error and "deadbeef" not in state.last_error
    assert int(dal.get_account(account.tenant, account.caller.user).next_sync_at) > time.time(), "backoff"
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller)
    assert status.body["state"] == "failed" and "deadbeef" not in status.raw

    monkeypatch.setattr(engine.AccountSync, "run", working)
    assert account.sync().status == "synced"
    assert dal.get_sync_state(account.tenant, account.caller.user).state == "idle"
    assert int(dal.get_account(account.tenant, account.caller.user).next_sync_at) == 0
