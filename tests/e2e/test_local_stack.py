"""A new developer's first steps: `make run`, a `make token` token, the API against a Dovecot account."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime

from devstack.dovecot import make_message
from tests.e2e.conftest import Running, make_token, wait_for_sync


def test_first_steps_over_http(local_stack: Running, mail_user) -> None:
    output = "\n".join(local_stack.output)
    assert "Swagger UI" in output and "template.yaml" in output, output

    assert local_stack.request("GET", "/v1/users/me/mail-settings")[0] == 401
    assert local_stack.request("GET", "/v1/users/me/mail-settings", token="not-a-jwt")[0] == 401
    status, page = local_stack.request("GET", "/swagger")
    assert status == 200 and "swagger" in str(page).lower()

    token = make_token("alice", "acme")
    assert token.count(".") == 2
    status, body = local_stack.request("GET", "/v1/users/me/mail-settings", token)
    assert (status, body["error"]["code"]) == (404, "not_found")

    settings = {
        "host": "127.0.0.1",
        "port": mail_user.imap_port,
        "username": mail_user.username,
        "password": mail_user.password,
        "security": "starttls",
    }
    status, body = local_stack.request("PUT", "/v1/users/me/mail-settings", token, settings)
    assert status == 201, body
    assert "password" not in body

    status, body = local_stack.request("POST", "/v1/users/me/mail-settings/test", token)
    assert status == 200, body

    status, body = local_stack.request("GET", "/v1/users/me/server-folders", token)
    assert status == 200, body
    assert "Entwürfe" in {f["name"] for f in body["folders"]}

    status, suggestion = local_stack.request("GET", "/v1/users/me/folder-map", token)
    assert (status, suggestion["saved"]) == (200, False)
    status, saved = local_stack.request("PUT", "/v1/users/me/folder-map", token, suggestion["folders"])
    assert (status, saved["saved"]) == (200, True)

    # Mail appears once the in-process worker has synced (a CRM polls the same way).
    with mail_user.client("ssl") as imap:
        imap.append("INBOX", make_message(subject="Welcome to the dossier"))
    asked_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    assert local_stack.request("POST", "/v1/users/me/sync", token)[0] == 202
    status = wait_for_sync(local_stack, token, after=asked_at)
    inbox = next(f for f in status["folders"] if f["crm_folder"] == "inbox")
    assert inbox["messages"] == 1, status
    status, page = local_stack.request("GET", "/v1/users/me/messages", token)
    [msg] = [m for m in page["messages"] if m["subject"] == "Welcome to the dossier"]
    status, link = local_stack.request("GET", f"/v1/messages/{msg['id']}/raw", token)
    with urllib.request.urlopen(link["url"], timeout=10) as response:  # the local presigned URL works
        assert b"Welcome to the dossier" in response.read()

    # A colleague without the admin role may not read alice's settings; an admin may.
    assert local_stack.request("GET", "/v1/users/alice/mail-settings", make_token("bob", "acme"))[0] == 403
    assert local_stack.request("GET", "/v1/users/alice/mail-settings", make_token("root", "acme", "admin"))[0] == 200
    assert local_stack.request("GET", "/v1/users/alice/mail-settings", make_token("eve", "globex", "admin"))[0] == 404
