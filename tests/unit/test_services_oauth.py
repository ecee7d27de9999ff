"""Connecting a mailbox by OAuth2 consent (``mailsync.services.oauth``) on the in-memory data
layer, with the provider's token endpoint replaced by a recorder (the real exchange over HTTP
is the end-to-end test's)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.parse
from typing import Any

import pytest

from mailsync import oauth as oauth_protocol
from mailsync.config import get_settings
from mailsync.domain import Account
from mailsync.errors import Forbidden, NotFound, ValidationFailed
from mailsync.identity import Principal
from mailsync.services import accounts, oauth
from tests.unit.fake_dal import Fakes

ALICE = Principal(user_id="alice", tenant_id="acme", is_admin=False)
BOB = Principal(user_id="bob", tenant_id="acme", is_admin=False)
EVE = Principal(user_id="eve", tenant_id="globex", is_admin=False)
RETURN = "https://crm.example.com/settings/mail?tab=1"
REFRESH = "1//refresh-token-that-must-never-show"
SECRET = {"google_client_secret": "g-secret", "microsoft_client_secret": "m-secret", "state_key": "k" * 40}


def id_token(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


class Provider:
    """The token endpoint: records exchanges and revocations, answers with ``tokens``."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, str]] = []
        self.revoked: list[str] = []
        self.claims: dict[str, Any] = {
            "iss": "https://accounts.google.com",
            "aud": "google-client",
            "email": "alice@gmail.com",
            "email_verified": True,
        }
        self.refuse: Exception | None = None

    def exchange_code(self, endpoints: Any, secret: str, code: str, verifier: str, redirect: str, timeout: float):
        self.exchanges.append({"secret": secret, "code": code, "verifier": verifier, "redirect": redirect})
        if self.refuse is not None:
            raise self.refuse
        return oauth_protocol.Tokens(
            access_token="access-1", expires_in=3600, refresh_token=REFRESH, id_token=id_token(self.claims)
        )

    def revoke(self, endpoints: Any, secret: str, token: str, timeout: float) -> bool:
        self.revoked.append(token)
        return True


@pytest.fixture
def provider(fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch) -> Provider:
    monkeypatch.setenv("MAILSYNC_OAUTH_GOOGLE_CLIENT_ID", "google-client")
    monkeypatch.setenv("MAILSYNC_OAUTH_MICROSOFT_CLIENT_ID", "microsoft-client")
    monkeypatch.setenv("MAILSYNC_OAUTH_CLIENT_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:1:secret:x")
    monkeypatch.setenv("MAILSYNC_OAUTH_RETURN_ORIGINS", "https://crm.example.com, http://localhost:8080")
    get_settings.cache_clear()
    fake = Provider()
    monkeypatch.setattr(oauth_protocol, "deployment_secret", lambda settings: SECRET)
    monkeypatch.setattr(oauth_protocol, "exchange_code", fake.exchange_code)
    monkeypatch.setattr(oauth_protocol, "revoke", fake.revoke)
    return fake


def start(principal: Principal = ALICE, provider: str = "google", return_url: str = RETURN) -> dict[str, str]:
    url = oauth.start_consent(principal, "me", provider, return_url, "api.example.com")
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def result_of(location: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def fragment_of(location: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).fragment))


def finish_consent(code: str | None, state: str, error: str | None, principal: Principal = ALICE) -> str:
    """The browser's way back: the provider's redirect to the callback, then, with a code, the
    CRM frontend at the return URL finishing with ``principal``'s JWT; the return URL with the
    result in its query, as the frontend shows it."""
    location = oauth.callback_location(code, state, error)
    if result_of(location).get("result") != "confirm":
        return location
    carried = fragment_of(location)
    outcome = oauth.finish_consent(principal, carried["oauth_code"], carried["oauth_state"])
    shown = urllib.parse.urlsplit(location)._replace(fragment="")
    query = [(k, v) for k, v in urllib.parse.parse_qsl(shown.query) if k != "result"] + list(outcome.items())
    return urllib.parse.urlunsplit(shown._replace(query=urllib.parse.urlencode(query)))


def test_start_sends_the_user_to_google_with_pkce_s256_and_a_state(provider: Provider) -> None:
    params = start()
    assert params["client_id"] == "google-client"
    assert params["redirect_uri"] == "https://api.example.com/v1/oauth/callback"
    assert params["scope"] == "openid email https://mail.google.com/"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert params["access_type"] == "offline" and params["response_type"] == "code"
    assert "k" * 40 not in json.dumps(params)


def test_microsoft_scopes(provider: Provider) -> None:
    params = start(provider="microsoft")
    assert params["scope"].split() == [
        "openid",
        "email",
        "offline_access",
        "https://outlook.office.com/IMAP.AccessAsUser.All",
    ]


def test_callback_connects_the_mailbox_with_the_refresh_token_encrypted(provider: Provider, fake_dal: Fakes) -> None:
    # Given a started consent
    params = start()
    # When the provider sends the browser back with a code
    location = finish_consent("the-code", params["state"], None)
    # Then the code was exchanged with the PKCE verifier that matches the challenge
    exchange = provider.exchanges[0]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(exchange["verifier"].encode()).digest()).rstrip(b"=")
    assert challenge.decode() == params["code_challenge"]
    assert (exchange["code"], exchange["secret"]) == ("the-code", "g-secret")
    # and the browser goes back to the return URL, its own query kept
    assert location.startswith("https://crm.example.com/settings/mail?tab=1&")
    assert result_of(location) == {"tab": "1", "result": "connected"}
    # and the mailbox is Gmail's, logged in as the address, the token encrypted for alice alone
    account = fake_dal.dal.get_account("acme", "alice")
    assert account is not None
    assert (account.host, account.port, account.username, account.security) == (
        "imap.gmail.com",
        993,
        "alice@gmail.com",
        "ssl",
    )
    assert (account.auth, account.provider, account.status) == ("oauth2", "google", "pending")
    assert account.password_ciphertext is None and account.due_shard is not None
    assert fake_dal.kms.plaintexts[account.refresh_token_ciphertext] == ("acme", "alice", REFRESH)
    # and GET mail-settings shows how it logs in, never the token
    out = accounts.get_settings_for(ALICE, "me")
    assert (out.auth, out.provider, out.password_set) == ("oauth2", "google", False)
    assert out.oauth_scopes == ["openid", "email", "https://mail.google.com/"] and out.connected_at is not None
    dumped = json.dumps(out.model_dump(mode="json"))
    assert REFRESH not in dumped and "fake-kms" not in dumped


def test_a_state_serves_once(provider: Provider) -> None:
    params = start()
    finish_consent("the-code", params["state"], None)
    with pytest.raises(ValidationFailed) as refused:
        finish_consent("the-code", params["state"], None)
    assert refused.value.field == "state" and len(provider.exchanges) == 1


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: s[:-2] + ("AA" if not s.endswith("AA") else "BB"),  # forged signature
        lambda s: s.split(".")[0] + "." + str(int(s.split(".")[1]) + 600) + "." + s.split(".")[2],  # longer life
        lambda s: "",
        lambda s: "x" * 513,
        lambda s: "naïve.123.sig",
        lambda s: s + ".extra",
        lambda s: "a.b.c",
    ],
    ids=["forged-signature", "extended-expiry", "empty", "oversized", "non-ascii", "four-parts", "not-a-number"],
)
def test_a_forged_or_malformed_state_is_422_on_state_and_nothing_is_exchanged(provider: Provider, tamper) -> None:
    params = start()
    with pytest.raises(ValidationFailed) as refused:
        finish_consent("the-code", tamper(params["state"]), None)
    assert refused.value.field == "state" and provider.exchanges == []


def test_a_forged_state_does_not_spend_the_consent(provider: Provider, fake_dal: Fakes) -> None:
    state = start()["state"]
    forged = state[:-2] + ("AA" if not state.endswith("AA") else "BB")
    with pytest.raises(ValidationFailed):
        finish_consent("the-code", forged, None)
    # the user's browser, holding the real state, still connects
    assert result_of(finish_consent("the-code", state, None))["result"] == "connected"


def test_an_expired_state_is_refused(provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    params = start()
    later = time.time() + get_settings().oauth_state_ttl_seconds + 1
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(ValidationFailed) as refused:
        finish_consent("the-code", params["state"], None)
    assert refused.value.field == "state" and provider.exchanges == []


def test_a_state_signed_for_another_binding_does_not_verify(provider: Provider, fake_dal: Fakes) -> None:
    # Given eve's consent (another tenant) and alice's
    eve = start(EVE)
    alice = start(ALICE)
    # When eve's nonce is sent with alice's expiry and signature (or the other way round)
    eve_nonce, _, _ = eve["state"].split(".")
    _, alice_expiry, alice_signature = alice["state"].split(".")
    with pytest.raises(ValidationFailed):
        finish_consent("code", f"{eve_nonce}.{alice_expiry}.{alice_signature}", None)
    # Then nothing is saved for either
    assert fake_dal.dal.accounts == {}


def test_consent_denied_and_failed_exchange_return_with_an_error_code(provider: Provider, fake_dal: Fakes) -> None:
    denied = finish_consent(None, start()["state"], "access_denied")
    assert result_of(denied) == {"tab": "1", "result": "error", "code": "consent_denied"}
    provider.refuse = oauth_protocol.OAuthError("invalid_grant")
    failed = finish_consent("bad-code", start()["state"], None)
    assert result_of(failed)["code"] == "token_exchange_failed"
    provider.refuse = oauth_protocol.TokenEndpointUnavailable("down")
    down = finish_consent("code", start()["state"], None)
    assert result_of(down)["code"] == "token_exchange_failed"
    assert fake_dal.dal.accounts == {}


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "someone-else"},
        {"iss": "https://evil.example"},
    ],
    ids=["other-audience", "other-issuer"],
)
def test_an_id_token_for_another_client_or_issuer_is_refused(
    provider: Provider, fake_dal: Fakes, claims: dict[str, str]
) -> None:
    provider.claims.update(claims)
    location = finish_consent("code", start()["state"], None)
    assert result_of(location)["code"] == "token_exchange_failed" and fake_dal.dal.accounts == {}


def test_a_microsoft_personal_account_is_the_wrong_account_type(provider: Provider, fake_dal: Fakes) -> None:
    provider.claims = {
        "iss": "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
        "aud": "microsoft-client",
        "tid": oauth.MICROSOFT_PERSONAL_TENANT,
        "preferred_username": "someone@outlook.com",
    }
    location = finish_consent("code", start(provider="microsoft")["state"], None)
    assert result_of(location)["code"] == "wrong_account_type" and fake_dal.dal.accounts == {}


def test_microsoft_work_account_by_preferred_username(provider: Provider, fake_dal: Fakes) -> None:
    provider.claims = {
        "iss": "https://login.microsoftonline.com/0b1c2d3e-0000-4000-8000-000000000000/v2.0",
        "aud": "microsoft-client",
        "tid": "0b1c2d3e-0000-4000-8000-000000000000",
        "preferred_username": "alice@contoso.com",
    }
    location = finish_consent("code", start(provider="microsoft")["state"], None)
    assert result_of(location)["result"] == "connected"
    account = fake_dal.dal.get_account("acme", "alice")
    assert account is not None
    assert (account.host, account.username, account.provider) == (
        "outlook.office365.com",
        "alice@contoso.com",
        "microsoft",
    )


@pytest.mark.parametrize(
    "return_url",
    [
        "https://crm.example.com.evil.test/x",
        "https://evil.test/?https://crm.example.com",
        "https://user@crm.example.com/",
        "javascript:alert(1)",
        "//crm.example.com/x",
        "https://crm.example.com:8443/",
        "https://crm.example.com/ü",
        "https://crm.example.com/" + "a" * 2048,
        "https://crm.example.com/\r\nSet-Cookie: x",
    ],
)
def test_a_return_url_outside_the_allowed_origins_is_422_on_return_url(provider: Provider, return_url: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        start(return_url=return_url)
    assert refused.value.field == "return_url"


def test_allowed_origins_match_exactly_with_default_ports(provider: Provider) -> None:
    assert start(return_url="https://CRM.example.com:443/back")["state"]
    assert start(return_url="http://localhost:8080/back")["state"]


def test_unknown_or_unconfigured_provider_is_422_on_provider(provider: Provider, monkeypatch) -> None:
    with pytest.raises(ValidationFailed) as unknown:
        start(provider="yahoo")
    assert unknown.value.field == "provider"
    monkeypatch.delenv("MAILSYNC_OAUTH_MICROSOFT_CLIENT_ID")
    get_settings.cache_clear()
    with pytest.raises(ValidationFailed) as unconfigured:
        start(provider="microsoft")
    assert unconfigured.value.field == "provider"


def test_a_colleague_or_another_tenant_cannot_start_a_consent_for_alice(provider: Provider, fake_dal: Fakes) -> None:
    fake_dal.dal.accounts[("acme", "alice")] = Account("acme", "alice", "imap.example.com", 993, "a", "ssl")
    with pytest.raises(Forbidden):
        oauth.start_consent(BOB, "alice", "google", RETURN, "api.example.com")
    with pytest.raises(NotFound):
        oauth.start_consent(EVE, "alice", "google", RETURN, "api.example.com")


def test_an_oversized_or_non_ascii_code_is_422_on_code(provider: Provider) -> None:
    params = start()
    for code in ("c" * 4097, "cöde"):
        with pytest.raises(ValidationFailed) as refused:
            finish_consent(code, params["state"], None)
        assert refused.value.field == "code"


def test_delete_revokes_the_grant_then_destroys_it(provider: Provider, fake_dal: Fakes) -> None:
    finish_consent("code", start()["state"], None)
    accounts.delete_settings(ALICE, "me")
    assert provider.revoked == [REFRESH] and fake_dal.dal.accounts == {}


def test_a_password_replaces_the_grant_and_revokes_it(provider: Provider, fake_dal: Fakes) -> None:
    from pydantic import SecretStr

    from mailsync.schemas import MailSettingsIn

    finish_consent("code", start()["state"], None)
    body = MailSettingsIn(host="imap.gmail.com", username="alice@gmail.com", password=SecretStr("app-password"))
    out, created = accounts.put_settings(ALICE, "me", body)
    account = fake_dal.dal.get_account("acme", "alice")
    assert account is not None and not created
    assert (out.auth, out.provider, account.refresh_token_ciphertext) == ("password", None, None)
    assert provider.revoked == [REFRESH]


def test_reconnecting_bumps_the_settings_version(provider: Provider, fake_dal: Fakes) -> None:
    finish_consent("code", start()["state"], None)
    first = fake_dal.dal.get_account("acme", "alice")
    finish_consent("code", start()["state"], None)
    second = fake_dal.dal.get_account("acme", "alice")
    assert first is not None and second is not None
    assert second.settings_version == first.settings_version + 1
    assert second.refresh_token_ciphertext != first.refresh_token_ciphertext


@pytest.mark.parametrize("before", ["none", "password"])
def test_a_mailbox_connected_by_oauth_is_marked_active(provider: Provider, fake_dal: Fakes, before: str) -> None:
    """As after saving settings: adaptive polling polls it soon, at any hour."""
    if before == "password":
        fake_dal.dal.accounts[("acme", "alice")] = Account(
            "acme", "alice", "imap.example.com", 993, "alice", "ssl", password_ciphertext=b"pw"
        )
    now = int(time.time())
    assert result_of(finish_consent("the-code", start()["state"], None))["result"] == "connected"
    account = fake_dal.dal.get_account("acme", "alice")
    assert account is not None and account.last_activity_at is not None and account.last_activity_at >= now


# --- which browser finishes a consent (docs/operations.md) --------------------------------------


def test_the_callback_exchanges_nothing_and_hands_the_code_to_the_return_url_fragment_only(
    provider: Provider, fake_dal: Fakes
) -> None:
    state = start()["state"]
    location = oauth.callback_location("the-code", state, None)
    # The query says what to do; the code and state are in the fragment (never sent to a server)
    assert result_of(location) == {"tab": "1", "result": "confirm"}
    assert fragment_of(location) == {"oauth_state": state, "oauth_code": "the-code"}
    assert "the-code" not in urllib.parse.urlsplit(location).query
    # Nothing exchanged, nothing saved, the consent still there for its user
    assert provider.exchanges == [] and fake_dal.dal.accounts == {} and len(fake_dal.dal.consents) == 1


def test_a_victim_completing_an_attackers_consent_connects_nothing(provider: Provider, fake_dal: Fakes) -> None:
    # Given bob (the attacker) starts a consent and gets alice (the victim) to open its link:
    # alice's browser approves with her Google account and comes back to the return URL
    attacker_state = start(BOB)["state"]
    location = oauth.callback_location("alices-code", attacker_state, None)
    carried = fragment_of(location)
    # When alice's CRM frontend finishes it with her JWT
    with pytest.raises(Forbidden):
        oauth.finish_consent(ALICE, carried["oauth_code"], carried["oauth_state"])
    # Then her code was never exchanged and no settings were saved, for bob or for alice
    assert provider.exchanges == [] and fake_dal.dal.accounts == {}
    # and bob, who never sees the code (it went to alice's browser only), has nothing to finish with:
    # his guess is exchanged for nothing and spends his consent
    provider.refuse = oauth_protocol.OAuthError("invalid_grant")
    assert oauth.finish_consent(BOB, "guessed-code", attacker_state) == {
        "result": "error",
        "code": "token_exchange_failed",
    }
    assert fake_dal.dal.accounts == {}


@pytest.mark.parametrize("stranger", [BOB, EVE], ids=["colleague", "other-tenant"])
def test_only_the_user_who_started_a_consent_can_finish_it(
    provider: Provider, fake_dal: Fakes, stranger: Principal
) -> None:
    state = start(ALICE)["state"]
    with pytest.raises(Forbidden):
        oauth.finish_consent(stranger, "the-code", state)
    # The stranger's attempt did not spend it: alice finishes
    assert oauth.finish_consent(ALICE, "the-code", state) == {"result": "connected"}
    assert fake_dal.dal.get_account("acme", "alice") is not None and fake_dal.dal.get_account("acme", "bob") is None


def test_an_admin_finishes_the_consent_they_started_for_a_colleague(provider: Provider, fake_dal: Fakes) -> None:
    admin = Principal(user_id="root", tenant_id="acme", is_admin=True)
    url = oauth.start_consent(admin, "alice", "google", RETURN, "api.example.com")
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["state"]
    with pytest.raises(Forbidden):
        oauth.finish_consent(ALICE, "the-code", state)
    assert oauth.finish_consent(admin, "the-code", state) == {"result": "connected"}
    assert fake_dal.dal.get_account("acme", "alice") is not None


def test_finish_refuses_a_missing_or_hostile_code_on_code(provider: Provider) -> None:
    state = start()["state"]
    for code in ("", "é", "x" * 5000):
        with pytest.raises(ValidationFailed) as refused:
            oauth.finish_consent(ALICE, code, state)
        assert refused.value.field == "code"
    assert provider.exchanges == []


# --- a grant shared by two CRM users ------------------------------------------------------------


def test_a_grant_another_user_of_the_tenant_holds_for_the_same_mailbox_is_not_revoked(
    provider: Provider, fake_dal: Fakes
) -> None:
    # Given alice and bob both connected the shared mailbox with the same Google account
    finish_consent("code-a", start(ALICE)["state"], None, principal=ALICE)
    provider.claims["email"] = "Alice@Gmail.com"  # the provider may spell it otherwise
    finish_consent("code-b", oauth_start_for(BOB), None, principal=BOB)
    # When alice deletes her settings, Google's grant (which bob's token is part of) stays
    accounts.delete_settings(ALICE, "me")
    assert provider.revoked == [] and fake_dal.dal.get_account("acme", "alice") is None
    # Then bob, the last one holding it, revokes it when he deletes his
    accounts.delete_settings(BOB, "me")
    assert provider.revoked == [REFRESH]


def test_a_grant_is_revoked_when_the_others_hold_another_mailbox_or_are_in_another_tenant(
    provider: Provider, fake_dal: Fakes
) -> None:
    finish_consent("code-a", start(ALICE)["state"], None, principal=ALICE)
    provider.claims["email"] = "bob@gmail.com"
    finish_consent("code-b", oauth_start_for(BOB), None, principal=BOB)
    provider.claims["email"] = "alice@gmail.com"
    finish_consent("code-e", oauth_start_for(EVE), None, principal=EVE)
    accounts.delete_settings(ALICE, "me")
    assert provider.revoked == [REFRESH]


def oauth_start_for(principal: Principal) -> str:
    url = oauth.start_consent(principal, "me", "google", RETURN, "api.example.com")
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["state"]
