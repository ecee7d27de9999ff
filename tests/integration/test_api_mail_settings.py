"""The "E-mail settings" screen against a real Dovecot: save, test, list folders, map folders."""

from __future__ import annotations

import boto3
import pytest

from tests.conftest import ApiCall, Caller

SETTINGS = "/v1/users/me/mail-settings"


def settings_for(user, **overrides) -> dict:
    body = {
        "host": "127.0.0.1",
        "port": user.imaps_port,
        "username": user.username,
        "password": user.password,
        "security": "ssl",
        "protocol": "imap",
    }
    body.update(overrides)
    return body


@pytest.fixture
def saved(api: ApiCall, local_mail_env, mail_user):
    response = api("PUT", SETTINGS, settings_for(mail_user))
    assert response.status == 201, response.body
    return mail_user


def test_save_and_read_back_without_password(api: ApiCall, local_mail_env, mail_user) -> None:
    created = api("PUT", SETTINGS, settings_for(mail_user, port=None))
    assert created.status == 201
    assert created.body["port"] == 993, "default port for IMAP over SSL"
    assert created.body["password_set"] is True
    assert created.body["status"] == "pending"
    assert "password" not in created.body
    read = api("GET", SETTINGS)
    assert read.status == 200
    assert read.body["username"] == mail_user.username
    assert read.body["sync_window_days"] == 30
    assert mail_user.password not in read.raw


def test_right_password_over_ssl(api: ApiCall, saved) -> None:
    response = api("POST", f"{SETTINGS}/test")
    assert response.status == 200, response.body
    assert response.body["protocol"] == "imap"
    assert "IMAP4REV1" in {c.upper() for c in response.body["capabilities"]}
    assert api("GET", SETTINGS).body["status"] == "ok"


def test_right_password_over_starttls(api: ApiCall, local_mail_env, mail_user) -> None:
    api("PUT", SETTINGS, settings_for(mail_user, security="starttls", port=mail_user.imap_port))
    response = api("POST", f"{SETTINGS}/test")
    assert response.status == 200, response.body


def test_wrong_password_is_auth_failed_with_a_human_message(api: ApiCall, local_mail_env, mail_user) -> None:
    api("PUT", SETTINGS, settings_for(mail_user, password="not-the-password"))
    response = api("POST", f"{SETTINGS}/test")
    assert response.status == 502
    assert response.body["error"] == {
        "code": "auth_failed",
        "message": "Login to mailbox failed: check user name and password",
    }
    state = api("GET", SETTINGS).body
    assert state["status"] == "auth_failed"
    assert state["last_error"].startswith("Login to mailbox failed")


def test_new_password_clears_auth_failed(api: ApiCall, local_mail_env, mail_user) -> None:
    api("PUT", SETTINGS, settings_for(mail_user, password="wrong"))
    api("POST", f"{SETTINGS}/test")
    fixed = api("PUT", SETTINGS, settings_for(mail_user))
    assert fixed.body["status"] == "pending"
    assert fixed.body["last_error"] is None
    assert api("POST", f"{SETTINGS}/test").status == 200


def test_omitted_password_keeps_the_saved_one(api: ApiCall, saved) -> None:
    body = settings_for(saved, sync_window_days=14)
    del body["password"]
    updated = api("PUT", SETTINGS, body)
    assert updated.status == 200
    assert updated.body["sync_window_days"] == 14
    assert api("POST", f"{SETTINGS}/test").status == 200


def test_self_signed_certificate_refused_without_the_extra_ca(
    api: ApiCall, saved, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.config import get_settings

    monkeypatch.delenv("MAILSYNC_EXTRA_CA_FILE")
    get_settings.cache_clear()
    response = api("POST", f"{SETTINGS}/test")
    assert response.status == 502
    assert response.body["error"]["code"] == "tls_failed"
    assert "certificate" in response.body["error"]["message"]


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_pop3_login(api: ApiCall, local_mail_env, mail_user, security: str) -> None:
    port = mail_user.pop3s_port if security == "ssl" else mail_user.pop3_port
    api("PUT", SETTINGS, settings_for(mail_user, protocol="pop3", security=security, port=port))
    response = api("POST", f"{SETTINGS}/test")
    assert response.status == 200, response.body
    assert response.body["protocol"] == "pop3"
    folders = api("GET", "/v1/users/me/server-folders").body["folders"]
    assert [(f["name"], f["suggested"]) for f in folders] == [("INBOX", "inbox")]


def test_unsaved_settings_can_be_tested_before_saving(api: ApiCall, local_mail_env, mail_user) -> None:
    ok = api("POST", f"{SETTINGS}/test", settings_for(mail_user))
    assert ok.status == 200
    bad = api("POST", f"{SETTINGS}/test", settings_for(mail_user, password="nope"))
    assert bad.body["error"]["code"] == "auth_failed"
    assert api("GET", SETTINGS).status == 404, "testing does not save"


def test_connection_refused_is_connect_failed(api: ApiCall, local_mail_env, mail_user) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    response = api("POST", f"{SETTINGS}/test", settings_for(mail_user, port=closed_port))
    assert response.status == 502
    assert response.body["error"]["code"] == "connect_failed"


def test_security_none_refused_unless_the_deployment_allows_it(
    api: ApiCall, local_mail_env, mail_user, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailsync.config import get_settings

    plain = settings_for(mail_user, security="none", port=mail_user.imap_port)
    refused = api("PUT", SETTINGS, plain)
    assert refused.status == 422
    assert refused.body["error"]["field"] == "security"
    monkeypatch.setenv("MAILSYNC_ALLOW_INSECURE", "true")
    get_settings.cache_clear()
    assert api("PUT", SETTINGS, plain).status == 201
    assert api("POST", f"{SETTINGS}/test").status == 200


def test_private_hosts_refused_in_deployed_mode(api: ApiCall, saved, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", "false")
    get_settings.cache_clear()
    put = api("PUT", SETTINGS, settings_for(saved, host="169.254.169.254"))
    assert (put.status, put.body["error"]["field"]) == (422, "host")
    # Already-saved loopback settings are refused at connect time too (DNS may change after saving).
    test = api("POST", f"{SETTINGS}/test")
    assert test.status == 502
    assert "does not allow" in test.body["error"]["message"]


def test_delete_stops_and_destroys_credentials(api: ApiCall, saved, aws) -> None:
    assert api("DELETE", SETTINGS).status == 204
    assert api("GET", SETTINGS).status == 404
    assert api("POST", f"{SETTINGS}/test").status == 404
    items = boto3.client("dynamodb").scan(TableName=aws["ACCOUNTS_TABLE"])["Items"]
    assert items == []


def test_ciphertext_is_bound_to_its_user(api: ApiCall, saved, aws) -> None:
    from mailsync import crypto
    from mailsync.config import get_settings

    item = boto3.client("dynamodb").get_item(
        TableName=aws["ACCOUNTS_TABLE"], Key={"tenant_id": {"S": "acme"}, "user_id": {"S": "alice"}}
    )["Item"]
    ciphertext = item["password_ciphertext"]["B"]
    assert crypto.decrypt_password(ciphertext, "acme", "alice", get_settings()) == saved.password
    with pytest.raises(crypto.PasswordUnreadable):
        crypto.decrypt_password(ciphertext, "acme", "bob", get_settings())


# --- folders -----------------------------------------------------------------------------------


def test_server_folders_live_with_non_ascii_and_suggestions(api: ApiCall, saved) -> None:
    response = api("GET", "/v1/users/me/server-folders")
    assert response.status == 200, response.body
    folders = {f["name"]: f for f in response.body["folders"]}
    assert "Entwürfe" in folders, "modified UTF-7 is decoded"
    assert folders["Sent"]["special_use"] == "\\Sent"
    suggested = {name: f["suggested"] for name, f in folders.items()}
    assert suggested["INBOX"] == "inbox"
    assert suggested["Sent"] == "sent"
    assert suggested["Drafts"] == "drafts"
    assert suggested["Trash"] == "trash"
    assert suggested["Archive"] == "archive"
    assert suggested["Junk"] is None
    assert suggested["Entwürfe"] is None, "drafts already taken by the SPECIAL-USE folder"


def test_well_known_names_suggested_without_special_use(api: ApiCall, saved) -> None:
    with saved.client("ssl") as client:
        client.create_folder("Verzonden berichten")
        client.create_folder("Gesendete Elemente")
    folders = {f["name"]: f["suggested"] for f in api("GET", "/v1/users/me/server-folders").body["folders"]}
    assert folders["Verzonden berichten"] is None, "Sent carries \\Sent and wins"
    assert folders["Sent"] == "sent"


def test_folder_map_suggestion_then_save(api: ApiCall, saved) -> None:
    before = api("GET", "/v1/users/me/folder-map")
    assert before.status == 200
    assert before.body["saved"] is False
    assert before.body["folders"]["inbox"] == "INBOX"
    assert before.body["folders"]["sent"] == "Sent"

    wanted = {"inbox": "INBOX", "sent": "Sent", "drafts": "Entwürfe", "klanten": "Archive"}
    put = api("PUT", "/v1/users/me/folder-map", wanted)
    assert put.status == 200, put.body
    after = api("GET", "/v1/users/me/folder-map")
    assert after.body["saved"] is True
    assert after.body["folders"] == wanted
    # The wrapped form that GET returns is accepted too.
    assert api("PUT", "/v1/users/me/folder-map", {"folders": wanted}).status == 200


def test_folder_map_names_the_missing_server_folder(api: ApiCall, saved) -> None:
    response = api("PUT", "/v1/users/me/folder-map", {"inbox": "INBOX", "sent": "Verzonden items"})
    assert response.status == 422
    assert response.body["error"]["field"] == "sent"
    assert "Verzonden items" in response.body["error"]["message"]
    assert api("GET", "/v1/users/me/folder-map").body["saved"] is False


@pytest.mark.parametrize(
    ("folder_map", "field"),
    [
        ({"sent": "Sent"}, "inbox"),
        ({"inbox": "INBOX", "sent": "INBOX"}, "sent"),
        ({"inbox": "INBOX", "Bad Key": "Sent"}, "Bad Key"),
    ],
)
def test_folder_map_shape_errors(api: ApiCall, saved, folder_map: dict, field: str) -> None:
    response = api("PUT", "/v1/users/me/folder-map", folder_map)
    assert response.status == 422
    assert response.body["error"]["field"] == field


def test_folder_list_with_wrong_password_is_auth_failed(api: ApiCall, local_mail_env, mail_user) -> None:
    api("PUT", SETTINGS, settings_for(mail_user, password="wrong"))
    for path in ("/v1/users/me/server-folders", "/v1/users/me/folder-map"):
        response = api("GET", path)
        assert response.status == 502
        assert response.body["error"]["code"] == "auth_failed"


# --- authorization ----------------------------------------------------------------------------

ALICE = Caller("alice", "acme", "user")
BOB = Caller("bob", "acme", "user")
ADMIN = Caller("carol", "acme", "admin")
EVE = Caller("eve", "globex", "user")
EVE_ADMIN = Caller("mallory", "globex", "admin")


@pytest.mark.parametrize(
    ("caller", "path_user", "expected"),
    [
        (ALICE, "me", 200),
        (ALICE, "alice", 200),
        (ADMIN, "alice", 200),
        (BOB, "alice", 403),
        (EVE, "alice", 404),
        (EVE_ADMIN, "alice", 404),
    ],
)
def test_authorization_matrix(api: ApiCall, saved, caller: Caller, path_user: str, expected: int) -> None:
    base = f"/v1/users/{path_user}"
    assert api("GET", f"{base}/mail-settings", caller=caller).status == expected
    assert api("GET", f"{base}/server-folders", caller=caller).status == expected
    assert api("GET", f"{base}/folder-map", caller=caller).status == expected
    assert api("POST", f"{base}/mail-settings/test", caller=caller).status == expected
    put = api("PUT", f"{base}/mail-settings", settings_for(saved), caller=caller)
    assert put.status == (201 if expected == 404 and caller.role == "admin" else 200 if expected == 200 else expected)
    if expected == 403:
        assert api("DELETE", f"{base}/mail-settings", caller=caller).status == 403
        assert api("GET", "/v1/users/alice/mail-settings").status == 200, "alice's settings untouched"


def test_admin_of_other_tenant_cannot_reach_alice(api: ApiCall, saved) -> None:
    # An admin's PUT for "alice" lands in the admin's own tenant; acme's alice is unchanged.
    api("PUT", "/v1/users/alice/mail-settings", settings_for(saved, username="intruder"), caller=EVE_ADMIN)
    assert api("GET", SETTINGS).body["username"] == saved.username
