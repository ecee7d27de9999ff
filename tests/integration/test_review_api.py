"""Review findings on the API side of issue 9: racing settings writes, oversized tenant settings,
retries of a message without Message-ID, POP3 accounts that cannot sync, and cursors outside
their query's range.

Races are made deterministic by running the concurrent request at the point between the
service's read and its write (``_settle_pending_ops`` runs exactly there), never by timing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from devstack.dovecot import make_message
from tests.conftest import ApiCall, Caller
from tests.integration.sync_support import Account, connect_account, days_ago, message

SETTINGS = "/v1/users/me/mail-settings"
ALICE_SETTINGS = "/v1/users/alice/mail-settings"
MAP = {"inbox": "INBOX", "sent": "Sent", "archive": "Archive", "trash": "Trash"}
ALICE = Caller("alice", "acme", "user")
ADMIN = Caller("root", "acme", "admin")
CHANGED = "The settings changed meanwhile; reload and try again"


@pytest.fixture
def alice(api: ApiCall, local_mail_env, mail_user) -> Account:
    return connect_account(api, mail_user, MAP, who="alice")


def between_read_and_write(monkeypatch: pytest.MonkeyPatch, concurrent: Callable[[], None]) -> list[int]:
    """Run ``concurrent`` once, inside the next settings PUT, after it read the account and
    before it writes. Returns a list that records that it ran."""
    from mailsync.services import accounts

    original = accounts._settle_pending_ops
    ran: list[int] = []

    def interleaved(*args: Any, **kwargs: Any) -> None:
        if not ran:
            ran.append(1)
            concurrent()
        original(*args, **kwargs)

    monkeypatch.setattr(accounts, "_settle_pending_ops", interleaved)
    return ran


def saved_pair() -> tuple[str, str]:
    """The stored host and the password its ciphertext decrypts to."""
    from mailsync import dal
    from mailsync.config import get_settings
    from mailsync.services.accounts import server_params

    account = dal.get_account("acme", "alice")
    assert account is not None
    params = server_params(account, get_settings())
    return params.host, params.password


# --- 1. the saved password never ends up beside a host it was not saved for -----------------------


def test_a_put_without_password_racing_a_put_of_another_server_is_409_and_never_mixes(
    api: ApiCall, alice: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = (alice.settings_body()["host"], alice.user.password)
    assert saved_pair() == original
    elsewhere = alice.settings_body() | {"host": "localhost", "password": "saved-for-localhost"}

    def users_put() -> None:
        assert api("PUT", SETTINGS, elsewhere, caller=ALICE).status == 200

    ran = between_read_and_write(monkeypatch, users_put)
    # The admin read the old server; sending it back without the password looked unchanged.
    body = alice.settings_body() | {"sync_window_days": 7}
    del body["password"]
    admins = api("PUT", ALICE_SETTINGS, body, caller=ADMIN)
    assert ran
    assert (admins.status, admins.body["error"]) == (409, {"code": "conflict", "message": CHANGED}), admins.raw
    assert saved_pair() == ("localhost", "saved-for-localhost"), "host and password of different PUTs"
    # Reloading and sending again is the way out (the read now sees the new server).
    assert api("PUT", ALICE_SETTINGS, {**body, "host": "localhost"}, caller=ADMIN).status == 200
    assert saved_pair() == ("localhost", "saved-for-localhost")


def test_a_put_racing_a_delete_and_recreate_does_not_reuse_the_new_password(
    api: ApiCall, alice: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delete and re-create restart settings_version at 1: the kept ciphertext is checked too."""
    recreated = alice.settings_body() | {"host": "localhost", "password": "new-account-password"}

    def delete_and_recreate() -> None:
        assert api("DELETE", SETTINGS, caller=ALICE).status == 204
        assert api("PUT", SETTINGS, recreated, caller=ALICE).status == 201

    between_read_and_write(monkeypatch, delete_and_recreate)
    body = alice.settings_body()
    del body["password"]
    stale = api("PUT", ALICE_SETTINGS, body, caller=ADMIN)
    assert (stale.status, stale.body["error"]["code"]) == (409, "conflict"), stale.raw
    assert saved_pair() == ("localhost", "new-account-password")


def test_two_first_puts_racing_are_one_201_and_one_409(api: ApiCall, aws, monkeypatch: pytest.MonkeyPatch) -> None:
    admins = {"host": "imap.example.com", "username": "alice", "password": "the-admins"}

    def admin_creates_first() -> None:
        assert api("PUT", ALICE_SETTINGS, admins, caller=ADMIN).status == 201

    between_read_and_write(monkeypatch, admin_creates_first)
    users = api("PUT", SETTINGS, {"host": "mail.example.org", "username": "alice", "password": "the-users"})
    assert (users.status, users.body["error"]) == (409, {"code": "conflict", "message": CHANGED}), users.raw
    assert saved_pair() == ("imap.example.com", "the-admins")


# --- 2. a PUT racing a DELETE -------------------------------------------------------------------


def test_a_put_racing_a_delete_is_404_and_recreates_nothing(
    api: ApiCall, alice: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    def users_delete() -> None:
        assert api("DELETE", SETTINGS, caller=ALICE).status == 204

    ran = between_read_and_write(monkeypatch, users_delete)
    body = alice.settings_body()
    del body["password"]
    response = api("PUT", ALICE_SETTINGS, body | {"sync_window_days": 7}, caller=ADMIN)
    assert ran
    assert (response.status, response.body["error"]["code"]) == (404, "not_found"), response.raw
    assert api("GET", SETTINGS, caller=ALICE).status == 404


def test_a_folder_map_put_racing_a_delete_is_404_and_recreates_nothing(
    api: ApiCall, alice: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.services import folder_maps

    checked = folder_maps.check_folders_exist

    def check_then_user_deletes(*args: Any, **kwargs: Any) -> None:
        checked(*args, **kwargs)  # the map was checked live; now the user deletes the settings
        assert api("DELETE", SETTINGS, caller=ALICE).status == 204

    monkeypatch.setattr(folder_maps, "check_folders_exist", check_then_user_deletes)
    response = api("PUT", "/v1/users/alice/folder-map", {"inbox": "INBOX"}, caller=ADMIN)
    assert (response.status, response.body["error"]["code"]) == (404, "not_found"), response.raw
    assert api("GET", SETTINGS, caller=ALICE).status == 404


# --- 3. tenant settings within one DynamoDB item -----------------------------------------------


def test_tenant_settings_at_the_schemas_maximums_are_422_not_500(api: ApiCall, aws) -> None:
    longest = "a" * 64 + "@" + "b" * 251 + ".com"  # 320 characters
    assert len(longest) == 320
    contacts = [f"{i:04d}{longest[4:]}" for i in range(5000)]
    response = api(
        "PUT", "/v1/tenant/settings", {"confidential_keywords": [], "confidential_contacts": contacts}, caller=ADMIN
    )
    assert (response.status, response.body["error"]["field"]) == (422, "confidential_contacts"), response.raw[:300]
    assert "300,000 bytes" in response.body["error"]["message"]

    keywords = [f"{i:03d}" + "\U0001f512" * 97 for i in range(200)]  # 100 characters, 391 bytes each
    response = api(
        "PUT", "/v1/tenant/settings", {"confidential_keywords": keywords, "confidential_contacts": []}, caller=ADMIN
    )
    assert (response.status, response.body["error"]["field"]) == (422, "confidential_keywords"), response.raw[:300]

    # Just under both budgets together: saved and read back whole.
    contacts = contacts[:930]  # 297,600 bytes
    keywords = keywords[:127]  # 49,657 bytes
    body = {"confidential_keywords": keywords, "confidential_contacts": contacts}
    saved = api("PUT", "/v1/tenant/settings", body, caller=ADMIN)
    assert saved.status == 200, saved.raw[:300]
    got = api("GET", "/v1/tenant/settings", caller=ADMIN).body
    assert (len(got["confidential_contacts"]), len(got["confidential_keywords"])) == (930, 127)


# --- 4. a retried POST of a message without Message-ID or Idempotency-Key ---------------------------


def test_a_retried_post_without_message_id_or_key_stores_once(api: ApiCall, alice: Account) -> None:
    from mailsync import dal

    raw = make_message(subject="no id, no key", date=days_ago(0.1), message_id=None)
    assert b"Message-ID" not in raw
    body = {"raw": base64.b64encode(raw).decode()}
    first = api("POST", "/v1/users/me/messages", body, caller=ALICE)
    again = api("POST", "/v1/users/me/messages", body, caller=ALICE)
    assert (first.status, again.status) == (201, 201), again.raw
    assert again.body == first.body
    assert [m["id"] for m in alice.messages()] == [first.body["id"]]
    assert len(dal.ops_waiting("acme", "alice")) == 1
    # Another folder is another request.
    archived = api("POST", "/v1/users/me/messages", body | {"folder": "archive"}, caller=ALICE)
    assert archived.status == 201 and archived.body["id"] != first.body["id"]


# --- 5. POP3 accounts: saved, tested and scheduled like IMAP ones (issue 13) ----------------------


def account_item(aws: dict[str, str], user: str) -> dict[str, Any]:
    return boto3.client("dynamodb").get_item(
        TableName=aws["ACCOUNTS_TABLE"], Key={"tenant_id": {"S": "acme"}, "user_id": {"S": user}}
    )["Item"]


def test_pop3_accounts_are_due_and_can_be_synced_on_request(
    api: ApiCall, aws: dict[str, str], local_mail_env, mail_user
) -> None:
    from mailsync.services import scheduling

    pop3 = {
        "host": "127.0.0.1",
        "port": mail_user.pop3s_port,
        "username": mail_user.username,
        "password": mail_user.password,
        "security": "ssl",
        "protocol": "pop3",
    }
    assert api("PUT", SETTINGS, pop3, caller=ALICE).status == 201
    assert "due_shard" in account_item(aws, "alice")
    # A successful login test (real Dovecot POP3) records the status and keeps it scheduled.
    assert api("POST", f"{SETTINGS}/test", caller=ALICE).status == 200
    item = account_item(aws, "alice")
    assert "due_shard" in item and item["status"] == {"S": "ok"}
    assert scheduling.enqueue_due_accounts() == 1

    status = api("GET", "/v1/users/me/sync-status", caller=ALICE).body
    assert (status["state"], status["last_error"]) == ("never", None)
    assert api("POST", "/v1/users/me/sync", caller=ALICE).status == 202


def test_an_account_that_may_not_sync_left_in_the_due_index_leaves_it_at_its_first_job(
    api: ApiCall, aws: dict[str, str], local_mail_env, mail_user
) -> None:
    from mailsync import dal
    from mailsync.services import scheduling
    from mailsync.services.sync_jobs import SyncJob, run_job

    body = {"host": "127.0.0.1", "port": mail_user.imaps_port, "username": mail_user.username, "fetch_enabled": False}
    assert api("PUT", SETTINGS, body | {"password": mail_user.password}, caller=ALICE).status == 201
    account = dal.get_account("acme", "alice")
    dal.update_account(account, scheduling.due_fields("acme", "alice", True, "pending"))  # as a stale write would
    assert scheduling.enqueue_due_accounts() == 1

    assert run_job(SyncJob(tenant_id="acme", user_id="alice")).status == "skipped"
    assert "due_shard" not in account_item(aws, "alice")
    assert scheduling.enqueue_due_accounts() == 0


# --- 6. cursors outside their query's range ------------------------------------------------------


def _cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def test_a_cursor_older_than_since_is_422(api: ApiCall, alice: Account) -> None:
    with alice.user.client() as imap:
        imap.append("INBOX", message("recent"), internal_date=days_ago(1))
        imap.append("INBOX", message("older"), internal_date=days_ago(3))
    assert alice.sync().status == "synced"
    for extra in ("", "&folder=inbox"):
        first = api("GET", "/v1/users/me/messages", query="limit=1" + extra, caller=ALICE)
        assert [m["subject"] for m in first.body["messages"]] == ["recent"]
        cursor = first.body["next_cursor"]
        later = days_ago(0.5).strftime("%Y-%m-%dT%H:%M:%SZ")
        response = api("GET", "/v1/users/me/messages", query=f"cursor={cursor}&since={later}" + extra, caller=ALICE)
        assert (response.status, response.body["error"]["field"]) == (422, "cursor"), response.raw
        earlier = days_ago(5).strftime("%Y-%m-%dT%H:%M:%SZ")
        page = api("GET", "/v1/users/me/messages", query=f"cursor={cursor}&since={earlier}" + extra, caller=ALICE)
        assert page.status == 200 and [m["subject"] for m in page.body["messages"]] == ["older"]


def test_a_cursor_with_a_lone_surrogate_is_422(api: ApiCall, alice: Account) -> None:
    for sort_key in ("\ud800", "2026-01-01T00:00:00.000000+00:00#\udfff"):
        forged = {"pk": {"S": "M#x"}, "sk": {"S": "M"}, "gsi1pk": {"S": "A#acme#alice"}, "gsi1sk": {"S": sort_key}}
        response = api("GET", "/v1/users/me/messages", query=f"cursor={_cursor(forged)}", caller=ALICE)
        assert (response.status, response.body["error"]["field"]) == (422, "cursor"), response.raw
