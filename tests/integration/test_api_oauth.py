"""The OAuth2 consent over the API handler (real HTTP API events, moto with the template's
tables, a Secrets Manager secret) against a token endpoint on loopback speaking RFC 6749."""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest

from devstack.lambda_runtime import LambdaContext, http_event, load_handler
from tests.conftest import ApiCall, ApiResponse, Caller, api_response

REFRESH = "refresh-token-7f3a9c-never-in-plain"
RETURN = "https://crm.example.com/mail"


def _id_token(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}."


class TokenEndpoint(ThreadingHTTPServer):
    """/token answers a code for tokens (refuses a wrong verifier: PKCE), /revoke records."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: TokenEndpoint

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        self.server.requests.append((self.path, form))
        if self.path == "/revoke":
            self._answer(200, {})
        elif form.get("code") == "good-code" and len(form.get("code_verifier", "")) >= 43:
            claims = {"iss": "https://idp.test", "aud": "google-client", "email": "alice@gmail.com"}
            self._answer(
                200,
                {
                    "access_token": "access-1",
                    "expires_in": 3599,
                    "refresh_token": REFRESH,
                    "id_token": _id_token(claims),
                    "scope": "openid email https://mail.google.com/",
                    "token_type": "Bearer",
                },
            )
        else:
            self._answer(400, {"error": "invalid_grant"})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    server = TokenEndpoint()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def oauth_env(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, token_endpoint: TokenEndpoint) -> TokenEndpoint:
    from mailsync import oauth
    from mailsync.config import get_settings

    secret = {"google_client_secret": "g-secret", "microsoft_client_secret": "m-secret", "state_key": "s" * 48}
    arn = boto3.client("secretsmanager").create_secret(Name="mailsync-oauth", SecretString=json.dumps(secret))["ARN"]
    for name, value in {
        "MAILSYNC_OAUTH_CLIENT_SECRET_ARN": arn,
        "MAILSYNC_OAUTH_GOOGLE_CLIENT_ID": "google-client",
        "MAILSYNC_OAUTH_GOOGLE_ISSUER": "https://idp.test",
        "MAILSYNC_OAUTH_GOOGLE_AUTHORIZE_URL": "https://idp.test/authorize",
        "MAILSYNC_OAUTH_GOOGLE_TOKEN_URL": f"{token_endpoint.url}/token",
        "MAILSYNC_OAUTH_GOOGLE_REVOKE_URL": f"{token_endpoint.url}/revoke",
        "MAILSYNC_OAUTH_GOOGLE_USERINFO_URL": "",
        "MAILSYNC_OAUTH_RETURN_ORIGINS": "https://crm.example.com",
        "MAILSYNC_ALLOW_PRIVATE_HOSTS": "true",  # the token endpoint on loopback over plain http
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    oauth.forget_secret()
    return token_endpoint


def callback(query: str) -> ApiResponse:
    """The browser coming back: no Authorization header, no authorizer claims."""
    handler = load_handler("api")
    event = http_event("GET", "/v1/oauth/callback", query=query)
    return api_response(handler(event, LambdaContext(function_name="ApiFunction")))


def start(api: ApiCall, return_url: str = RETURN, caller: Caller | None = None) -> dict[str, str]:
    response = api("POST", "/v1/users/me/oauth/google/start", {"return_url": return_url}, caller=caller)
    assert response.status == 200, response.body
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(response.body["authorization_url"]).query))


def back_from_provider(code: str, state: str) -> dict[str, str]:
    """The callback's redirect to the return URL; what its fragment hands the CRM frontend."""
    done = callback(urllib.parse.urlencode({"code": code, "state": state}))
    assert done.status == 302, done.body
    location = urllib.parse.urlsplit(done.headers["Location"])
    assert urllib.parse.urlunsplit(location._replace(fragment="")) == f"{RETURN}?result=confirm"
    assert code not in location.query and done.headers["Referrer-Policy"] == "no-referrer"
    return dict(urllib.parse.parse_qsl(location.fragment))


def finish(api: ApiCall, carried: dict[str, str], caller: Caller | None = None) -> ApiResponse:
    """The CRM frontend at the return URL, with its user's JWT."""
    body = {"state": carried["oauth_state"], "code": carried["oauth_code"]}
    return api("POST", "/v1/oauth/finish", body, caller=caller)


def test_consent_connects_the_mailbox_and_the_refresh_token_is_stored_encrypted_only(
    api: ApiCall, oauth_env: TokenEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    params = start(api)
    assert params["redirect_uri"] == "https://127.0.0.1/v1/oauth/callback"
    done = finish(api, back_from_provider("good-code", params["state"]))
    assert (done.status, done.body) == (200, {"result": "connected", "code": None}), done.raw
    settings = api("GET", "/v1/users/me/mail-settings")
    assert settings.status == 200
    assert {k: settings.body[k] for k in ("auth", "provider", "host", "port", "username", "status")} == {
        "auth": "oauth2",
        "provider": "google",
        "host": "imap.gmail.com",
        "port": 993,
        "username": "alice@gmail.com",
        "status": "pending",
    }
    assert settings.body["oauth_scopes"] == ["openid", "email", "https://mail.google.com/"]
    # The token is in no answer, no log line, no table item in plain text.
    items = boto3.client("dynamodb").scan(TableName=oauth_env_table())["Items"]
    assert REFRESH not in json.dumps(items, default=str)
    assert REFRESH.encode() not in b"".join(v["B"] for i in items for v in i.values() if "B" in v)
    assert REFRESH not in settings.raw and REFRESH not in done.raw
    assert REFRESH not in capsys.readouterr().out
    # DELETE revokes the grant at the provider, then destroys it.
    assert api("DELETE", "/v1/users/me/mail-settings").status == 204
    assert oauth_env.requests[-1] == (
        "/revoke",
        {
            "token": REFRESH,
            "token_type_hint": "refresh_token",
            "client_id": "google-client",
            "client_secret": "g-secret",
        },
    )


def oauth_env_table() -> str:
    from mailsync.config import get_settings

    return get_settings().accounts_table


def test_a_replayed_state_is_422_on_state(api: ApiCall, oauth_env: TokenEndpoint) -> None:
    carried = back_from_provider("good-code", start(api)["state"])
    assert finish(api, carried).status == 200
    replay = finish(api, carried)
    assert replay.status == 422 and replay.body["error"]["field"] == "state"
    assert callback(urllib.parse.urlencode({"code": "good-code", "state": carried["oauth_state"]})).status == 422


def test_a_refused_code_returns_with_token_exchange_failed(api: ApiCall, oauth_env: TokenEndpoint) -> None:
    done = finish(api, back_from_provider("stolen-code", start(api)["state"]))
    assert (done.status, done.body) == (200, {"result": "error", "code": "token_exchange_failed"})
    assert api("GET", "/v1/users/me/mail-settings").status == 404


def test_consent_denied_returns_with_the_error_at_once(api: ApiCall, oauth_env: TokenEndpoint) -> None:
    state = start(api)["state"]
    done = callback(urllib.parse.urlencode({"error": "access_denied", "state": state}))
    assert (done.status, done.headers["Location"]) == (302, f"{RETURN}?result=error&code=consent_denied")
    assert oauth_env.requests == []


def test_an_attackers_consent_completed_in_a_victims_browser_connects_nothing(
    api: ApiCall, oauth_env: TokenEndpoint
) -> None:
    """Mallory starts a consent and gets alice to open its authorization link; alice approves
    with her mailbox and her browser returns to the CRM, where her frontend finishes with her JWT."""
    mallory = Caller(user="mallory")
    carried = back_from_provider("good-code", start(api, caller=mallory)["state"])
    refused = finish(api, carried)  # alice's JWT
    assert refused.status == 403 and refused.body["error"]["code"] == "forbidden"
    # Alice's code was never exchanged; nobody's mail settings exist
    assert oauth_env.requests == []
    assert api("GET", "/v1/users/me/mail-settings").status == 404
    assert api("GET", "/v1/users/me/mail-settings", caller=mallory).status == 404
    # Mallory never saw alice's code (it went to alice's browser only): a guess connects nothing
    guessed = finish(api, {**carried, "oauth_code": "guessed"}, caller=mallory)
    assert guessed.body == {"result": "error", "code": "token_exchange_failed"}
    assert api("GET", "/v1/users/me/mail-settings", caller=mallory).status == 404


def test_a_victims_state_completed_with_the_attackers_mailbox_connects_nothing(
    api: ApiCall, oauth_env: TokenEndpoint
) -> None:
    """The other way round: alice's state reaches mallory, who approves it with his own mailbox
    in his browser and finishes with his JWT, to get his mailbox into alice's CRM user."""
    mallory = Caller(user="mallory")
    alice_state = start(api)["state"]
    carried = back_from_provider("good-code", alice_state)  # in mallory's browser
    refused = finish(api, carried, caller=mallory)
    assert refused.status == 403 and oauth_env.requests == []
    assert api("GET", "/v1/users/me/mail-settings").status == 404
    # Alice's consent was not spent: her own browser's code still connects her mailbox
    assert finish(api, back_from_provider("good-code", alice_state)).body == {"result": "connected", "code": None}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"state": "a.1.b"}, "code"),
        ({"state": "a.1.b", "code": "c" * 5000}, "code"),
        ({"state": "a.1.b", "code": "c\u00f6de"}, "code"),
        ({"state": "x" * 600, "code": "c"}, "state"),
        ({"state": "a.1.b", "code": "c"}, "state"),
        ({"state": "a.1.b", "code": "c", "more": 1}, "more"),
    ],
)
def test_hostile_finishes_are_4xx_naming_the_field(
    api: ApiCall, oauth_env: TokenEndpoint, body: dict[str, Any], field: str
) -> None:
    response = api("POST", "/v1/oauth/finish", body)
    assert 400 <= response.status < 500, response.raw
    assert field in json.dumps(response.body["error"])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("", "state"),
        ("state=" + "a" * 600, "state"),
        ("state=%C3%A9t%C3%A9.1.x&code=c", "state"),
        ("state=%FF%FE&code=c", "state"),
        ("state=a.1.b&code=%00", "code"),
        ("code=" + "c" * 5000 + "&state=x", "code"),
        ("code=c%C3%B6de&state=a.1.b", "code"),
        ("state=a.99999999999.b&error=" + "e" * 300, "error"),
    ],
)
def test_hostile_callbacks_are_4xx_naming_the_field(oauth_env: TokenEndpoint, query: str, field: str) -> None:
    response = callback(query)
    assert 400 <= response.status < 500, response.raw
    assert response.body["error"]["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"return_url": "https://evil.test/"}, "return_url"),
        ({"return_url": "https://crm.example.com/" + "x" * 3000}, "return_url"),
        ({"return_url": "https://crm.example.com/é"}, "return_url"),
        ({}, "return_url"),
    ],
)
def test_start_refuses_return_urls_outside_the_allow_list(
    api: ApiCall, oauth_env: TokenEndpoint, body: dict[str, str], field: str
) -> None:
    response = api("POST", "/v1/users/me/oauth/google/start", body)
    assert response.status == 422, response.raw
    assert response.body["error"]["field"] == field


def test_start_for_an_unknown_provider_or_without_a_token_is_refused(api: ApiCall, oauth_env: TokenEndpoint) -> None:
    unknown = api("POST", "/v1/users/me/oauth/yahoo/start", {"return_url": RETURN})
    assert unknown.status == 422 and unknown.body["error"]["field"] == "provider"
    handler = load_handler("api")
    event = http_event("POST", "/v1/users/me/oauth/google/start", body={"return_url": RETURN})
    assert api_response(handler(event, LambdaContext(function_name="ApiFunction"))).status == 401


def test_the_callback_is_the_only_api_route_without_the_jwt_authorizer_in_aws_and_locally() -> None:
    from devstack.provision import load_template
    from devstack.run import PUBLIC_PATHS, TEMPLATE

    events = load_template(TEMPLATE)["Resources"]["ApiFunction"]["Properties"]["Events"]
    public = {
        e["Properties"]["Path"]
        for e in events.values()
        if (e["Properties"].get("Auth") or {}).get("Authorizer") == "NONE"
    }
    assert public == {"/swagger", "/v1/oauth/callback"} == set(PUBLIC_PATHS)
    assert events["OAuthCallback"]["Properties"]["Method"] == "GET"


def test_a_grant_shared_with_a_colleague_is_revoked_only_by_the_last_one_holding_it(
    api: ApiCall, oauth_env: TokenEndpoint
) -> None:
    """Both connect the same Google mailbox (one grant at Google): the tenant's other items
    (its settings) sit in the same partition of the accounts table."""
    admin = Caller(user="root", role="admin")
    assert (
        api(
            "PUT",
            "/v1/tenant/settings",
            {"confidential_keywords": ["secret"], "confidential_contacts": []},
            caller=admin,
        ).status
        == 200
    )
    bob = Caller(user="bob")
    for caller in (None, bob):
        done = finish(api, back_from_provider("good-code", start(api, caller=caller)["state"]), caller=caller)
        assert done.body == {"result": "connected", "code": None}
    assert api("DELETE", "/v1/users/me/mail-settings").status == 204
    assert [path for path, _ in oauth_env.requests] == ["/token", "/token"]
    assert api("DELETE", "/v1/users/me/mail-settings", caller=bob).status == 204
    assert [path for path, _ in oauth_env.requests] == ["/token", "/token", "/revoke"]
