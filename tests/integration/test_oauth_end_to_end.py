"""Issue 12's whole OAuth2 flow against real servers on loopback: Mailsync's API (in-process,
real HTTP API events, moto), a local authorization server built on Authlib (over HTTP), and a
Dovecot whose ``oauth2`` passdb validates access tokens by RFC 7662 introspection against it.

start -> consent (auto-approved) -> callback -> finish (the CRM frontend, with the JWT) -> first
sync over XOAUTH2/OAUTHBEARER -> the provider expires the access token -> refresh -> sync -> the
user revokes consent -> ``reauth_required`` (event, off the schedule) -> DELETE revokes at the
provider.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from devstack.dovecot import DovecotServer
from devstack.lambda_runtime import LambdaContext, http_event, load_handler
from tests.conftest import ApiCall, ApiResponse, api_response
from tests.fixtures.oauth_server import CLIENT_ID, CLIENT_SECRET, RunningServer, run_server
from tests.integration.sync_support import capture_events, message

REDIRECT_URI = "http://127.0.0.1:3000/v1/oauth/callback"
RETURN = "https://crm.example.com/mail-settings"


@pytest.fixture
def provider() -> Iterator[RunningServer]:
    yield from run_server(REDIRECT_URI, approve_as="")


@pytest.fixture
def oauth_dovecot(tmp_path: Path, provider: RunningServer) -> Iterator[DovecotServer]:
    server = DovecotServer(tmp_path / "dovecot-oauth2", oauth2_introspection_url=provider.introspection_url_for_dovecot)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def wired(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, provider: RunningServer, oauth_dovecot: DovecotServer):
    """Mailsync's settings pointing Google's endpoints and IMAP server at the local ones."""
    from mailsync import oauth
    from mailsync.config import get_settings
    from mailsync.services import oauth_tokens

    secret = {"google_client_secret": CLIENT_SECRET, "state_key": secrets.token_urlsafe(32)}
    arn = boto3.client("secretsmanager").create_secret(Name="oauth", SecretString=json.dumps(secret))["ARN"]
    for name, value in {
        "MAILSYNC_OAUTH_CLIENT_SECRET_ARN": arn,
        "MAILSYNC_OAUTH_GOOGLE_CLIENT_ID": CLIENT_ID,
        "MAILSYNC_OAUTH_GOOGLE_ISSUER": provider.url,
        "MAILSYNC_OAUTH_GOOGLE_AUTHORIZE_URL": f"{provider.url}/authorize",
        "MAILSYNC_OAUTH_GOOGLE_TOKEN_URL": f"{provider.url}/token",
        "MAILSYNC_OAUTH_GOOGLE_REVOKE_URL": f"{provider.url}/revoke",
        "MAILSYNC_OAUTH_GOOGLE_USERINFO_URL": "",
        "MAILSYNC_OAUTH_GOOGLE_IMAP_HOST": "127.0.0.1",
        "MAILSYNC_OAUTH_GOOGLE_IMAP_PORT": str(oauth_dovecot.imaps_port),
        "MAILSYNC_OAUTH_REDIRECT_URI": REDIRECT_URI,
        "MAILSYNC_OAUTH_RETURN_ORIGINS": "https://crm.example.com",
        "MAILSYNC_ALLOW_PRIVATE_HOSTS": "true",
        "MAILSYNC_EXTRA_CA_FILE": str(oauth_dovecot.ca_file),
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    oauth.forget_secret()
    oauth_tokens.forget_all_access_tokens()
    yield
    oauth_tokens.forget_all_access_tokens()


def callback(query: str) -> ApiResponse:
    """The browser coming back from the provider: no Authorization header."""
    event = http_event("GET", "/v1/oauth/callback", query=query)
    return api_response(load_handler("api")(event, LambdaContext(function_name="ApiFunction")))


def follow_consent(authorization_url: str) -> str:
    """The browser at the provider's consent screen: the 302's Location (not followed)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(authorization_url, timeout=10)
    except urllib.error.HTTPError as answer:
        assert answer.code == 302, answer.read()
        return answer.headers["Location"]
    raise AssertionError("the consent screen did not redirect")


def sync() -> str:
    from mailsync.services.sync_jobs import SyncJob, run_job

    return run_job(SyncJob(tenant_id="acme", user_id="alice", reason="user")).status


def test_oauth2_mailbox_from_consent_to_reauth_required(
    api: ApiCall,
    wired: None,
    provider: RunningServer,
    oauth_dovecot: DovecotServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mailsync.config import get_settings

    mailbox = oauth_dovecot.add_user(f"alice-{secrets.token_hex(3)}@example.test")
    provider.server.approve_as = mailbox.username
    with mailbox.client() as imap:
        imap.append("INBOX", message("Hello over XOAUTH2"))
    events = capture_events(get_settings().event_bus_name)

    # start -> the provider's consent screen (approved) -> back to the callback -> the return URL,
    # where the CRM frontend finishes the consent with its user's JWT
    started = api("POST", "/v1/users/me/oauth/google/start", {"return_url": RETURN})
    assert started.status == 200, started.body
    location = follow_consent(started.body["authorization_url"])
    assert location.startswith(REDIRECT_URI + "?")
    back = callback(urllib.parse.urlsplit(location).query)
    assert back.status == 302 and back.headers["Location"].startswith(f"{RETURN}?result=confirm#")
    carried = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(back.headers["Location"]).fragment))
    done = api("POST", "/v1/oauth/finish", {"state": carried["oauth_state"], "code": carried["oauth_code"]})
    assert (done.status, done.body) == (200, {"result": "connected", "code": None}), done.raw
    settings = api("GET", "/v1/users/me/mail-settings").body
    assert (settings["auth"], settings["provider"], settings["username"]) == ("oauth2", "google", mailbox.username)

    # first sync, logged in with the access token (Dovecot asked the provider about it)
    assert sync() == "synced"
    subjects = [m["subject"] for m in api("GET", "/v1/users/me/messages").body["messages"]]
    assert subjects == ["Hello over XOAUTH2"]
    assert ("POST", "/introspect") in provider.server.store.requests
    assert api("GET", "/v1/users/me/mail-settings").body["status"] == "ok"

    # the provider ages the access token out: the mail server refuses it once, the same job
    # refreshes it and logs in again (the refused token is never sent twice)
    provider.server.expire_access_tokens()
    refreshes_before = provider.server.store.requests.count(("POST", "/token"))
    introspections_before = provider.server.store.requests.count(("POST", "/introspect"))
    assert sync() == "synced"
    assert provider.server.store.requests.count(("POST", "/token")) == refreshes_before + 1
    assert provider.server.store.requests.count(("POST", "/introspect")) == introspections_before + 2
    assert api("GET", "/v1/users/me/mail-settings").body["status"] == "ok"

    # the user withdraws consent at the provider: reauth_required, an event, off the schedule
    provider.server.revoke_grants()
    assert sync() == "failed"  # the cached token is refused, and the refresh says invalid_grant
    after = api("GET", "/v1/users/me/mail-settings").body
    assert after["status"] == "reauth_required"
    assert after["last_error"] == "The mail provider no longer allows access to this mailbox: connect it again"
    assert len(events.of_type("account.reauth_required")) == 1
    item = boto3.client("dynamodb").get_item(
        TableName=get_settings().accounts_table, Key={"tenant_id": {"S": "acme"}, "user_id": {"S": "alice"}}
    )["Item"]
    assert "due_shard" not in item and "next_sync_at" not in item
    introspections = provider.server.store.requests.count(("POST", "/introspect"))
    assert sync() == "skipped"  # no login attempt while the grant is gone
    assert provider.server.store.requests.count(("POST", "/introspect")) == introspections

    # no refresh token in plain text anywhere: table items, answers, logs
    refresh_tokens = {t.refresh_token for t in provider.server.store.tokens if t.refresh_token}
    items = json.dumps(boto3.client("dynamodb").scan(TableName=get_settings().accounts_table)["Items"], default=str)
    logs = capsys.readouterr()
    for token in refresh_tokens:
        assert token not in items and token not in logs.out and token not in logs.err
        assert token not in json.dumps(settings) and token not in done.raw

    # DELETE revokes at the provider (best effort), then destroys the settings
    assert api("DELETE", "/v1/users/me/mail-settings").status == 204
    assert ("POST", "/revoke") in provider.server.store.requests
