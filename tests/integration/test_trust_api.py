"""Issue 9 (trust), through the API: the saved password stays with its server, admins never write
into a colleague's mailbox, claims are checked, retried writes are idempotent, bad input is a 4xx,
and pending CRM changes survive (or fail visibly after) a DELETE and re-PUT of the settings.

Real Dovecot for every mail path; a bare listening socket where the point is that nothing connects.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from devstack.dovecot import make_message
from devstack.lambda_runtime import LambdaContext, http_event, load_handler
from tests.conftest import ApiCall, ApiResponse, Caller, api_response
from tests.integration.sync_support import (
    Account,
    connect_account,
    days_ago,
    message,
    server_flags,
    server_subjects,
)

SETTINGS = "/v1/users/me/mail-settings"
MAP = {"inbox": "INBOX", "sent": "Sent", "archive": "Archive", "trash": "Trash"}
ALICE = Caller("alice", "acme", "user")
BOB = Caller("bob", "acme", "user")
ADMIN = Caller("root", "acme", "admin")
REENTER = "Enter the password again when the server changes"


# --- helpers -----------------------------------------------------------------------------------


def call(
    method: str,
    path: str,
    body: Any = None,
    *,
    claims: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    query: str = "",
) -> ApiResponse:
    """The API handler with any claims and headers (the shared ``api`` fixture sets neither)."""
    event = http_event(method, path, body=body, query=query, headers=headers, claims=claims or ALICE.claims)
    return api_response(load_handler("api")(event, LambdaContext(function_name="ApiFunction")))


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listening socket that never answers: any login attempt against it leaves a connection
    in its accept queue (complete as soon as the client's connect() returns)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        yield sock


def connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.fixture
def alice(api: ApiCall, local_mail_env, mail_user) -> Account:
    return connect_account(api, mail_user, MAP, who="alice")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def seed(account: Account, *subjects: str) -> dict[str, dict]:
    with account.user.client() as imap:
        for subject in subjects:
            imap.append("INBOX", message(subject), internal_date=days_ago(1))
    assert account.sync().status == "synced"
    return account.synced()


def account_item(aws: dict[str, str], user: str) -> dict[str, Any]:
    return boto3.client("dynamodb").get_item(
        TableName=aws["ACCOUNTS_TABLE"], Key={"tenant_id": {"S": "acme"}, "user_id": {"S": user}}
    )["Item"]


def pending_op_count(user: str) -> int:
    from mailsync import dal

    return len(dal.ops_waiting("acme", user))


# --- 1. credentials stay with their server ------------------------------------------------------


@pytest.mark.parametrize("caller", [ALICE, ADMIN], ids=["owner", "admin"])
def test_testing_another_server_needs_the_password_and_connects_nowhere(
    api: ApiCall, alice: Account, trap: socket.socket, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.config import get_settings

    port = trap.getsockname()[1]
    path = "/v1/users/alice/mail-settings/test"
    for body in (
        {"port": port},
        {"host": "localhost", "port": port},
        {"port": port, "security": "starttls"},
        {"username": "someone-else", "port": port},
    ):
        response = api("POST", path, body, caller=caller)
        assert response.status == 422, (body, response.body)
        assert response.body["error"] == {"code": "validation_error", "message": REENTER, "field": "password"}
    assert connections(trap) == 0, "the saved password was sent to another server"
    # With the password, trying another server is fine (and reaches it; it never answers).
    monkeypatch.setenv("MAILSYNC_IMAP_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    with_password = api("POST", path, {"port": port, "password": "typed-again"}, caller=caller)
    assert with_password.status in (502, 504), with_password.body
    assert connections(trap) == 1


def test_a_put_that_changes_the_server_needs_the_password(api: ApiCall, alice: Account, trap: socket.socket) -> None:
    before = api("GET", SETTINGS, caller=ALICE).body
    body = alice.settings_body()
    del body["password"]
    for change in ({"host": "localhost"}, {"port": trap.getsockname()[1]}, {"username": "x@evil.example"}):
        for caller, path in ((ALICE, SETTINGS), (ADMIN, "/v1/users/alice/mail-settings")):
            response = api("PUT", path, body | change, caller=caller)
            assert (response.status, response.body["error"]["field"]) == (422, "password"), (change, response.body)
            assert response.body["error"]["message"] == REENTER
    assert api("GET", SETTINGS, caller=ALICE).body == before, "nothing saved"
    # Same server without the password: kept and still working; a sync does not go elsewhere.
    same = api("PUT", "/v1/users/alice/mail-settings", body | {"sync_window_days": 7}, caller=ADMIN)
    assert same.status == 200, same.body
    assert api("POST", f"{SETTINGS}/test", caller=ALICE).status == 200
    assert alice.sync().status == "synced"
    assert connections(trap) == 0


# --- 6. bad input: 4xx, never 500 ---------------------------------------------------------------


def test_non_ascii_credentials_are_accepted_and_lone_surrogates_refused(api: ApiCall, aws) -> None:
    body = {"host": "imap.example.com", "username": "jürgen@example.com", "password": "Passwört-2026"}
    saved = api("PUT", SETTINGS, body)
    assert saved.status == 201, saved.body
    assert api("GET", SETTINGS).body["username"] == "jürgen@example.com"
    for field in ("password", "username"):
        bad = call("PUT", SETTINGS, json.dumps(body | {field: "abc\ud800def"}).replace("\\\\", "\\"))
        assert (bad.status, bad.body["error"]["field"]) == (422, field), bad.raw
        assert "\ud800" not in bad.raw and "abc" not in bad.raw


def _cursor(value: Any) -> str:
    text = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


FORGED_CURSORS = {
    "garbage": "!!!$$$***",
    "not-json": _cursor(b"\xff\xfe not json at all"),
    "json-list": _cursor([1, 2, 3]),
    "json-string": _cursor("hello"),
    "pk-not-a-map": _cursor({"gsi1pk": "A#acme#alice"}),
    "pk-wrong-type": _cursor({"gsi1pk": {"N": "1"}, "gsi1sk": {"S": "x"}, "pk": {"S": "M#x"}, "sk": {"S": "M"}}),
    "missing-keys": _cursor({"gsi1pk": {"S": "A#acme#alice"}}),
    "extra-keys": _cursor(
        {k: {"S": "A#acme#alice" if k == "gsi1pk" else "x"} for k in ("pk", "sk", "gsi1pk", "gsi1sk", "zz")}
    ),
    "sk-a-number": _cursor(
        {"pk": {"S": "M#x"}, "sk": {"N": "5"}, "gsi1pk": {"S": "A#acme#alice"}, "gsi1sk": {"S": "x"}}
    ),
    "deep": _cursor(json.loads("[" * 50 + "]" * 50)),
    "huge": "A" * 5000,
}


@pytest.mark.parametrize("cursor", FORGED_CURSORS.values(), ids=FORGED_CURSORS.keys())
def test_forged_cursors_are_422_on_every_listing(api: ApiCall, alice: Account, cursor: str) -> None:
    for path in ("/v1/users/me/messages", "/v1/contacts/someone@example.com/messages"):
        for query in (f"cursor={cursor}", f"cursor={cursor}&folder=inbox"):
            response = api("GET", path, query=query, caller=ALICE)
            assert (response.status, response.body["error"]["field"]) == (422, "cursor"), (path, response.raw)


def test_cursors_this_api_returns_still_page_every_listing(api: ApiCall, alice: Account) -> None:
    seed(alice, "one", "two", "three")
    for path, extra in (
        ("/v1/users/me/messages", ""),
        ("/v1/users/me/messages", "&folder=inbox"),
        ("/v1/contacts/bob@example.com/messages", ""),
    ):
        subjects, cursor = [], None
        for _ in range(5):
            query = "limit=1" + extra + (f"&cursor={cursor}" if cursor else "")
            page = api("GET", path, query=query, caller=ALICE)
            assert page.status == 200, page.raw
            subjects += [m["subject"] for m in page.body["messages"]]
            cursor = page.body["next_cursor"]
            if not cursor:
                break
        assert sorted(subjects) == ["one", "three", "two"], path


def test_since_that_overflows_in_utc_is_422(api: ApiCall, alice: Account) -> None:
    for since in ("0001-01-01T00:00:00%2B01:00", "9999-12-31T23:59:59-01:00"):
        response = api("GET", "/v1/users/me/messages", query=f"since={since}", caller=ALICE)
        assert (response.status, response.body["error"]["field"]) == (422, "since"), response.raw


JSON_ROUTES = [
    ("PUT", SETTINGS),
    ("POST", f"{SETTINGS}/test"),
    ("PUT", "/v1/users/me/folder-map"),
    ("POST", "/v1/users/me/messages"),
    ("PATCH", "/v1/messages/abcdefghijklmnop"),
    ("PUT", "/v1/tenant/settings"),
]


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_json_nested_100000_deep_is_422_on_every_json_route(api: ApiCall, aws, method: str, path: str) -> None:
    for body in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        response = call(method, path, body, claims=ADMIN.claims)
        assert (response.status, response.body["error"]["field"]) == (422, "body"), response.raw[:300]
    # Deep enough to be odd, not deep enough to refuse: the route's own validation answers.
    assert call(method, path, '{"a":' * 20 + "1" + "}" * 20, claims=ADMIN.claims).status in (404, 422)


def test_oversized_headers_on_post_messages_are_422(api: ApiCall, alice: Account) -> None:
    references = " ".join(f"<{i:03d}.{'r' * 4500}@example.com>" for i in range(100))  # ~450 KB
    raw = (
        f"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: long thread\r\n"
        f"Message-ID: <long@example.com>\r\nReferences: {references}\r\n\r\nbody\r\n"
    ).encode()
    response = api("POST", "/v1/users/me/messages", {"raw": b64(raw)}, caller=ALICE)
    assert (response.status, response.body["error"]["field"]) == (422, "raw"), response.raw[:300]
    assert "References header is larger than 64 KB" in response.body["error"]["message"]
    assert alice.messages() == [] and pending_op_count("alice") == 0


def test_a_ciphertext_that_does_not_decrypt_for_this_user_is_a_clear_error(
    api: ApiCall, alice: Account, dovecot, aws
) -> None:
    bob = connect_account(api, dovecot.add_user(), MAP, who="bob")
    stolen = account_item(aws, "bob")["password_ciphertext"]
    boto3.client("dynamodb").update_item(
        TableName=aws["ACCOUNTS_TABLE"],
        Key={"tenant_id": {"S": "acme"}, "user_id": {"S": "alice"}},
        UpdateExpression="SET password_ciphertext = :c",
        ExpressionAttributeValues={":c": stolen},
    )
    response = api("POST", f"{SETTINGS}/test", caller=ALICE)
    assert response.status == 502, response.raw
    assert response.body["error"]["code"] == "auth_failed"
    assert "enter the password again" in response.body["error"]["message"]
    state = api("GET", SETTINGS, caller=ALICE).body
    assert state["status"] == "auth_failed" and "enter the password again" in state["last_error"]
    assert api("GET", "/v1/users/me/server-folders", caller=ALICE).status == 502
    assert bob.user.password not in response.raw
    # Entering the password again is the way out.
    assert api("PUT", SETTINGS, alice.settings_body(), caller=ALICE).status == 200
    assert api("POST", f"{SETTINGS}/test", caller=ALICE).status == 200


# --- 9. authorization ---------------------------------------------------------------------------


def test_admins_read_and_edit_settings_but_never_write_into_a_colleagues_mailbox(
    api: ApiCall, alice: Account, aws
) -> None:
    msg = seed(alice, "hello")["hello"]
    assert api("GET", "/v1/users/alice/mail-settings", caller=ADMIN).status == 200
    assert api("PUT", "/v1/users/alice/mail-settings", alice.settings_body(), caller=ADMIN).status == 200
    assert api("GET", f"/v1/messages/{msg['id']}", caller=ADMIN).status == 200
    assert api("POST", "/v1/users/alice/sync", caller=ADMIN).status == 202

    raw = make_message(subject="planted by an admin", date=days_ago(0.1))
    for path in ("/v1/users/alice/messages", "/v1/users/alice/messages"):
        posted = api("POST", path, {"raw": b64(raw)}, caller=ADMIN)
        assert posted.status == 403, posted.body
        assert "confidential" not in posted.raw
    assert api("PATCH", f"/v1/messages/{msg['id']}", {"seen": True}, caller=ADMIN).status == 403
    assert api("DELETE", f"/v1/messages/{msg['id']}", caller=ADMIN).status == 403
    assert api("POST", "/v1/users/alice/messages", {"raw": b64(raw)}, caller=BOB).status == 403

    assert pending_op_count("alice") == 0
    assert [m["subject"] for m in alice.messages()] == ["hello"]
    alice.sync(reason="push")
    assert server_subjects(alice, "Sent") == [] and server_subjects(alice, "INBOX") == ["hello"]

    # The owner's own 201 is unchanged.
    own = api("POST", "/v1/users/me/messages", {"raw": b64(raw)}, caller=ALICE)
    assert own.status == 201 and own.body["user_id"] == "alice"


@pytest.mark.parametrize("role", ["user admin", "sales,admin", "admin assistant", "[admin]"])
def test_role_strings_containing_admin_grant_nothing(api: ApiCall, aws, role: str) -> None:
    saved = api("PUT", SETTINGS, {"host": "imap.example.com", "username": "alice", "password": "p"}, caller=ALICE)
    assert saved.status == 201
    intruder = Caller("eve", "acme", role)
    assert api("GET", "/v1/tenant/settings", caller=intruder).status == 403
    assert api("GET", "/v1/users/alice/mail-settings", caller=intruder).status == 403
    assert api("GET", "/v1/tenant/settings", caller=Caller("eve", "acme", "admin")).status == 200


def test_groups_claim_as_api_gateway_renders_it(api: ApiCall, aws, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_CLAIM_ROLE", "cognito:groups")
    get_settings.cache_clear()
    member = {"sub": "root", "tenant_id": "acme", "cognito:groups": ["staff", "admin"]}  # -> "[staff admin]"
    assert call("GET", "/v1/tenant/settings", claims=member).status == 200
    for groups in (["staff"], ["sales,admin"], "admin assistant"):
        assert call("GET", "/v1/tenant/settings", claims=member | {"cognito:groups": groups}).status == 403


@pytest.mark.parametrize("tenant", ["a" * 3000, "acme#alice", "acme\n", "ac me"], ids=["3000", "hash", "nl", "space"])
def test_malformed_tenant_claim_is_401(aws, tenant: str) -> None:
    response = call("GET", SETTINGS, claims={"sub": "alice", "tenant_id": tenant, "role": "user"})
    assert (response.status, response.body["error"]["code"]) == (401, "unauthorized")


def test_no_count_shown_to_a_non_owner_includes_confidential_mail(api: ApiCall, alice: Account) -> None:
    from mailsync import dal

    with alice.user.client() as imap:
        imap.append("INBOX", message("Confidential: salary"), internal_date=days_ago(1))
        imap.append("INBOX", message("public"), internal_date=days_ago(1))
    assert alice.sync().status == "synced"
    state = dal.get_sync_state("acme", "alice")
    assert state is not None
    # As while a first sync runs:
    folders = {**state.folders, "INBOX": {**state.folders["INBOX"], "first_sync": {"total": 2, "done": 1}}}
    assert dal.take_lease("acme", "alice", "test-worker", 60) is not None
    dal.save_checkpoint("acme", "alice", "test-worker", folders=folders)
    dal.give_back_lease("acme", "alice", "test-worker")

    own = {f["server_folder"]: f for f in api("GET", "/v1/users/me/sync-status", caller=ALICE).body["folders"]}
    assert (own["INBOX"]["server_messages"], own["INBOX"]["first_sync"]) == (2, {"total": 2, "done": 1})
    seen_by_admin = api("GET", "/v1/users/alice/sync-status", caller=ADMIN).body["folders"]
    for folder in seen_by_admin:
        assert (folder["messages"], folder["server_messages"], folder["first_sync"]) == (None, None, None), folder


def test_syncing_is_shown_only_while_a_live_lease_exists(api: ApiCall, alice: Account) -> None:
    from mailsync import dal

    assert dal.take_lease("acme", "alice", "live-worker", 300, state="syncing") is not None
    assert api("GET", "/v1/users/me/sync-status", caller=ALICE).body["state"] == "syncing"
    dal.give_back_lease("acme", "alice", "live-worker", state="idle")

    # A worker that died: its lease ran out with the state still "syncing".
    assert dal.take_lease("acme", "alice", "dead-worker", -1, state="syncing") is not None
    status = api("GET", "/v1/users/me/sync-status", caller=ALICE).body
    assert status["state"] == "failed"
    assert status["last_error"].startswith("The last sync stopped unexpectedly")
    assert alice.sync().status == "synced", "an expired lease does not block the next job"
    assert api("GET", "/v1/users/me/sync-status", caller=ALICE).body["state"] == "idle"


# --- 10. idempotent writes ----------------------------------------------------------------------


def test_a_retried_post_returns_the_first_result_and_stores_once(api: ApiCall, alice: Account) -> None:
    raw = make_message(subject="Offer", date=days_ago(0.2), message_id="<offer-1@acme.example>")
    first = api("POST", "/v1/users/me/messages", {"raw": b64(raw)}, caller=ALICE)
    again = api("POST", "/v1/users/me/messages", {"raw": b64(raw)}, caller=ALICE)
    assert (first.status, again.status) == (201, 201), again.body
    assert again.body == first.body
    assert [m["id"] for m in alice.messages()] == [first.body["id"]]
    assert pending_op_count("alice") == 1
    alice.sync(reason="push")
    assert server_subjects(alice, "Sent") == ["Offer"]
    assert api("POST", "/v1/users/me/messages", {"raw": b64(raw)}, caller=ALICE).body["id"] == first.body["id"]
    assert len(alice.messages()) == 1

    # Same Message-ID, different content: a conflict, not a silent replay of another message.
    changed = raw.replace(b"Hello from", b"Goodbye from")
    conflict = api("POST", "/v1/users/me/messages", {"raw": b64(changed)}, caller=ALICE)
    assert (conflict.status, conflict.body["error"]["field"]) == (409, "raw")


def test_idempotency_key_header_and_scoping(api: ApiCall, alice: Account, dovecot) -> None:
    bob = connect_account(api, dovecot.add_user(), MAP, who="bob")
    raw = make_message(subject="no id", date=days_ago(0.1), message_id=None)
    key = {"Idempotency-Key": "retry-7f3a"}
    first = call("POST", "/v1/users/me/messages", {"raw": b64(raw)}, headers=key)
    again = call("POST", "/v1/users/me/messages", {"raw": b64(raw)}, headers=key)
    assert (first.status, again.status) == (201, 201)
    assert (
        again.body["id"] == first.body["id"] and again.body["internet_message_id"] == first.body["internet_message_id"]
    )
    # Another user with the same key (and another with the same Message-ID) is another message.
    bobs = call("POST", "/v1/users/me/messages", {"raw": b64(raw)}, headers=key, claims=BOB.claims)
    assert bobs.status == 201 and bobs.body["id"] != first.body["id"]
    with_id = make_message(subject="shared id", date=days_ago(0.1), message_id="<shared@acme.example>")
    ids = {
        call("POST", "/v1/users/me/messages", {"raw": b64(with_id)}, claims=who.claims).body["id"]
        for who in (ALICE, BOB)
    }
    assert len(ids) == 2
    # Without a key or a Message-ID the folder and bytes are the key: two posts, one message.
    plain = [api("POST", "/v1/users/me/messages", {"raw": b64(raw)}, caller=ALICE).body["id"] for _ in range(2)]
    assert len(set(plain)) == 1 and plain[0] != first.body["id"]
    assert len(alice.messages()) == 3 and len(bob.messages()) == 2
    # A key reused for a different body, and a malformed key.
    other = call("POST", "/v1/users/me/messages", {"raw": b64(with_id)}, headers=key)
    assert (other.status, other.body["error"]["field"]) == (409, "idempotency-key")
    bad = call("POST", "/v1/users/me/messages", {"raw": b64(raw)}, headers={"Idempotency-Key": "a b"})
    assert (bad.status, bad.body["error"]["field"]) == (422, "idempotency-key"), bad.raw


def test_patch_and_delete_repeated_give_the_same_result(api: ApiCall, alice: Account) -> None:
    msgs = seed(alice, "read twice", "bin twice")
    read, binned = msgs["read twice"], msgs["bin twice"]
    patches = [api("PATCH", f"/v1/messages/{read['id']}", {"seen": True}, caller=ALICE) for _ in range(2)]
    deletes = [api("DELETE", f"/v1/messages/{binned['id']}", caller=ALICE) for _ in range(2)]
    assert [p.status for p in patches] == [200, 200] and patches[0].body == patches[1].body
    assert [d.status for d in deletes] == [202, 202]
    assert deletes[0].body == deletes[1].body and deletes[0].body["folder"] == "trash"
    alice.sync(reason="push")
    assert server_subjects(alice, "INBOX") == ["read twice"]
    assert server_subjects(alice, "Trash") == ["bin twice"], "moved once"
    with alice.user.client() as imap:
        [uid] = imap.uids("INBOX")
        assert "\\Seen" in imap.flags("INBOX", uid)
    after = alice.by_subject()
    assert (after["read twice"]["seen"], after["read twice"]["sync_state"]) == (True, "synced")
    assert (after["bin twice"]["folder"], after["bin twice"]["sync_state"]) == ("trash", "synced")
    assert after["bin twice"]["id"] == binned["id"] and len(after) == 2


# --- 11. pending CRM changes across DELETE and re-PUT of the settings -----------------------------


def test_pending_changes_apply_after_delete_and_reput_of_the_same_mailbox(api: ApiCall, alice: Account) -> None:
    msgs = seed(alice, "read me later", "file me later")
    api("PATCH", f"/v1/messages/{msgs['read me later']['id']}", {"seen": True}, caller=ALICE)
    api("PATCH", f"/v1/messages/{msgs['file me later']['id']}", {"folder": "archive"}, caller=ALICE)
    assert api("DELETE", SETTINGS, caller=ALICE).status == 204
    assert api("GET", "/v1/users/me/sync-status", caller=ALICE).status == 404
    # Same mailbox again (over STARTTLS this time: the way there is not the mailbox).
    body = alice.settings_body() | {"security": "starttls", "port": alice.user.imap_port}
    assert api("PUT", SETTINGS, body, caller=ALICE).status == 201
    assert api("PUT", "/v1/users/me/folder-map", MAP, caller=ALICE).status == 200
    assert api("GET", "/v1/users/me/sync-status", caller=ALICE).body["state"] == "never"
    # A change made after the re-PUT must not overwrite the waiting ones (op numbers go on).
    with alice.user.client() as imap:
        imap.append("INBOX", message("new one"), internal_date=days_ago(0.5))
    assert alice.sync().status == "synced"
    assert server_subjects(alice, "Archive") == ["file me later"]
    assert "\\Seen" in server_flags(alice, "INBOX", "read me later")
    assert len(alice.messages()) == 3, "no duplicates after the re-PUT"
    after = alice.by_subject()
    assert {s: m["sync_state"] for s, m in after.items()} == dict.fromkeys(after, "synced")
    assert after["read me later"]["id"] == msgs["read me later"]["id"]
    assert after["file me later"]["folder"] == "archive"
    assert pending_op_count("alice") == 0


def test_pending_changes_fail_visibly_when_the_settings_move_to_another_mailbox(
    api: ApiCall, alice: Account, dovecot
) -> None:
    msgs = seed(alice, "waiting")
    api("PATCH", f"/v1/messages/{msgs['waiting']['id']}", {"seen": True}, caller=ALICE)
    assert api("DELETE", SETTINGS, caller=ALICE).status == 204
    other = dovecot.add_user()
    moved = connect_account(api, other, MAP, who="alice")
    after = moved.by_subject()["waiting"]
    assert after["sync_state"] == "failed"
    assert after["last_op_error"] == "The mail settings changed to another server before this change could be applied"
    assert pending_op_count("alice") == 0
    assert moved.sync().status == "synced"
    assert server_subjects(moved, "INBOX") == []


def test_pending_changes_fail_when_a_put_switches_mailbox_without_delete(api: ApiCall, alice: Account, dovecot) -> None:
    msgs = seed(alice, "also waiting")
    api("PATCH", f"/v1/messages/{msgs['also waiting']['id']}", {"seen": True}, caller=ALICE)
    other = dovecot.add_user()
    body = alice.settings_body() | {"username": other.username, "password": other.password}
    assert api("PUT", SETTINGS, body, caller=ALICE).status == 200
    after = alice.by_subject()["also waiting"]
    assert after["sync_state"] == "failed" and "another server" in after["last_op_error"]
    assert pending_op_count("alice") == 0


# --- 6. a raw "&" in a server's folder name --------------------------------------------------------


def _lists_raw_ampersand(peer: Any, tag: bytes, args: bytes) -> None:
    # "R&D" is not valid modified UTF-7 ("&" must be sent as "&-"), but some servers send it so.
    peer.send(b'* LIST (\\HasNoChildren) "/" INBOX\r\n* LIST (\\HasNoChildren) "/" "R&D"\r\n' + tag + b" OK done\r\n")


@pytest.fixture
def raw_ampersand_server(api: ApiCall, aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from mailsync.config import get_settings
    from tests.fixtures.hostile_server import HostileServer, imap_server

    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", "true")
    monkeypatch.setenv("MAILSYNC_ALLOW_INSECURE", "true")
    monkeypatch.setenv("MAILSYNC_IMAP_TIMEOUT_SECONDS", "5")
    get_settings.cache_clear()
    with HostileServer(imap_server({b"LIST": _lists_raw_ampersand})) as server:
        body = {"host": "127.0.0.1", "port": server.port, "username": "u", "password": "p", "security": "none"}
        assert api("PUT", SETTINGS, body).status == 201
        yield server


def test_undecodable_folder_name_is_never_blamed_on_the_request(api: ApiCall, raw_ampersand_server) -> None:
    response = api("GET", "/v1/users/me/server-folders")
    assert response.status in (200, 502), response.raw
    assert "UTF-8 JSON" not in response.raw
    if response.status == 502:
        assert response.body["error"]["code"] == "server_misbehaving"


def test_raw_ampersand_folder_name_is_shown_as_sent(api: ApiCall, raw_ampersand_server) -> None:
    response = api("GET", "/v1/users/me/server-folders")
    assert response.status == 200, response.raw
    assert [f["name"] for f in response.body["folders"]] == ["INBOX", "R&D"]
