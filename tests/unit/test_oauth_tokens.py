"""OAuth2 access tokens for the sync (``mailsync.services.oauth_tokens``): cached per container,
renewed ahead of expiry, one refresh at a time; a lost grant is ``reauth_required`` (off the
schedule, until a new consent), token endpoint trouble is transient."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest

from mailsync import oauth
from mailsync.config import get_settings
from mailsync.crypto import PasswordUnreadable
from mailsync.domain import Account
from mailsync.errors import ReauthRequired
from mailsync.services import accounts, oauth_tokens, scheduling
from mailsync.sync.planner import jobs as policy
from tests.unit.fake_dal import Fakes

REFRESH = "1//refresh-secret"


class TokenEndpoint:
    def __init__(self) -> None:
        self.calls = 0
        self.answer: Exception | None = None
        self.expires_in = 3600
        self.rotate = False
        self.gate: threading.Event | None = None
        self.timeouts: list[float] = []

    def refresh(self, endpoints: Any, secret: str, refresh_token: str, timeout: float) -> oauth.Tokens:
        self.calls += 1
        self.timeouts.append(timeout)
        if self.gate is not None:
            self.gate.wait(10)
        if self.answer is not None:
            raise self.answer
        assert refresh_token == REFRESH
        rotated = f"rotated-{self.calls}" if self.rotate else None
        return oauth.Tokens(access_token=f"access-{self.calls}", expires_in=self.expires_in, refresh_token=rotated)


@pytest.fixture
def endpoint(fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch) -> TokenEndpoint:
    monkeypatch.setenv("MAILSYNC_OAUTH_GOOGLE_CLIENT_ID", "google-client")
    get_settings.cache_clear()
    fake = TokenEndpoint()
    monkeypatch.setattr(oauth, "refresh", fake.refresh)
    monkeypatch.setattr(oauth, "deployment_secret", lambda settings: {"google_client_secret": "g"})
    oauth_tokens.forget_all_access_tokens()
    return fake


@pytest.fixture
def account(fake_dal: Fakes) -> Account:
    ciphertext = fake_dal.kms.encrypt_refresh_token(REFRESH, "acme", "alice", get_settings())
    stored = Account(
        "acme",
        "alice",
        "imap.gmail.com",
        993,
        "alice@gmail.com",
        "ssl",
        auth="oauth2",
        provider="google",
        refresh_token_ciphertext=ciphertext,
    )
    fake_dal.dal.accounts[("acme", "alice")] = stored
    return stored


def test_the_access_token_is_cached_until_shortly_before_it_expires(
    endpoint: TokenEndpoint, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings()
    assert oauth_tokens.access_token(account, settings) == "access-1"
    assert oauth_tokens.access_token(account, settings) == "access-1"
    assert endpoint.calls == 1
    # Within REFRESH_AHEAD_SECONDS of its expiry it is renewed.
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 3600 - oauth_tokens.REFRESH_AHEAD_SECONDS + 1)
    assert oauth_tokens.access_token(account, settings) == "access-2"


def test_server_params_log_in_with_the_access_token_not_a_password(endpoint: TokenEndpoint, account: Account) -> None:
    params = accounts.server_params(account, get_settings())
    assert (params.access_token, params.password, params.username) == ("access-1", "", "alice@gmail.com")
    assert "access-1" not in repr(params)


def test_concurrent_jobs_in_one_container_refresh_once(endpoint: TokenEndpoint, account: Account) -> None:
    endpoint.gate = threading.Event()
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(oauth_tokens.access_token(account, get_settings())))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    endpoint.gate.set()
    for thread in threads:
        thread.join(10)
    assert results == ["access-1"] * 4 and endpoint.calls == 1


def test_invalid_grant_is_reauth_required(endpoint: TokenEndpoint, account: Account) -> None:
    endpoint.answer = oauth.OAuthError("invalid_grant")
    with pytest.raises(ReauthRequired) as lost:
        oauth_tokens.access_token(account, get_settings())
    assert lost.value.code == "reauth_required" and "connect it again" in lost.value.message


@pytest.mark.parametrize(
    "answer",
    [oauth.TokenEndpointUnavailable("down"), oauth.OAuthError("invalid_client")],
    ids=["unreachable", "deployment-misconfigured"],
)
def test_token_endpoint_trouble_is_transient(endpoint: TokenEndpoint, account: Account, answer: Exception) -> None:
    endpoint.answer = answer
    with pytest.raises(oauth.TokenEndpointUnavailable) as trouble:
        oauth_tokens.access_token(account, get_settings())
    plan = policy.mailbox_failure(trouble.value.code, trouble.value.message, 0)
    assert plan.stays_due and trouble.value.code == "provider_unavailable"


def test_a_rotated_refresh_token_is_kept_encrypted(endpoint: TokenEndpoint, account: Account, fake_dal: Fakes) -> None:
    endpoint.rotate = True
    oauth_tokens.access_token(account, get_settings())
    stored = fake_dal.dal.get_account("acme", "alice")
    assert stored is not None and stored.refresh_token_ciphertext != account.refresh_token_ciphertext
    assert fake_dal.kms.plaintexts[stored.refresh_token_ciphertext] == ("acme", "alice", "rotated-1")
    # and the next job (reading the stored account) uses the cached access token
    assert oauth_tokens.access_token(stored, get_settings()) == "access-1" and endpoint.calls == 1


def test_refreshes_that_rotate_the_refresh_token_keep_one_lock_per_account(
    endpoint: TokenEndpoint, account: Account, fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Microsoft rotates the refresh token on every refresh: a lock kept per grant stayed behind
    # for each one, for the container's life.
    def rotating(endpoints: Any, secret: str, refresh_token: str, timeout: float) -> oauth.Tokens:
        endpoint.calls += 1
        return oauth.Tokens(access_token=f"access-{endpoint.calls}", expires_in=0, refresh_token=f"r-{endpoint.calls}")

    monkeypatch.setattr(oauth, "refresh", rotating)
    for _ in range(20):
        stored = fake_dal.dal.get_account("acme", "alice")
        assert stored is not None
        oauth_tokens.access_token(stored, get_settings())
    assert endpoint.calls == 20
    assert len(oauth_tokens._refreshing) == 1


def test_a_forgotten_token_is_refreshed(endpoint: TokenEndpoint, account: Account) -> None:
    oauth_tokens.access_token(account, get_settings())
    oauth_tokens.forget_access_token(account)
    assert oauth_tokens.access_token(account, get_settings()) == "access-2"


def test_reauth_required_leaves_the_schedule_until_a_new_consent() -> None:
    plan = policy.mailbox_failure("reauth_required", "connect again", 0)
    assert not plan.stays_due
    assert not policy.may_sync(fetch_enabled=True, status="reauth_required", protocol="imap")
    assert not policy.retry_in_job("reauth_required", 1, out_of_time=False)
    assert scheduling.due_fields("acme", "alice", True, "reauth_required") == {"due_shard": None, "next_sync_at": None}
    # A token the mail server refused is renewed at the account's next (backed-off) job.
    assert policy.mailbox_failure("token_rejected", "refused", 0).stays_due


def test_a_refused_access_token_is_renewed_once_never_resent() -> None:
    assert not policy.retry_in_job("token_rejected", 1, out_of_time=False)
    assert policy.renew_token_and_retry("token_rejected", renewed=False)
    assert not policy.renew_token_and_retry("token_rejected", renewed=True)
    assert not policy.renew_token_and_retry("connect_failed", renewed=False)


@pytest.mark.parametrize("change", ["new-consent", "password", "deleted"])
def test_a_rotated_refresh_token_never_overwrites_settings_changed_meanwhile(
    endpoint: TokenEndpoint, account: Account, fake_dal: Fakes, change: str
) -> None:
    """The refresh races with the user: what the user saved meanwhile stays."""
    endpoint.rotate = True
    endpoint.gate = threading.Event()
    refreshing = threading.Thread(target=lambda: oauth_tokens.access_token(account, get_settings()))
    refreshing.start()
    key = ("acme", "alice")
    if change == "deleted":
        del fake_dal.dal.accounts[key]
    else:
        fields: dict[str, Any] = {"settings_version": 2}
        if change == "new-consent":
            fields["refresh_token_ciphertext"] = fake_dal.kms.encrypt_refresh_token(
                "new", "acme", "alice", get_settings()
            )
        else:
            fields.update(auth="password", refresh_token_ciphertext=None, password_ciphertext=b"pw")
        fake_dal.dal.update_account(account, fields)
    saved = fake_dal.dal.accounts.get(key)
    endpoint.gate.set()
    refreshing.join(10)
    assert not refreshing.is_alive() and endpoint.calls == 1
    assert fake_dal.dal.accounts.get(key) == saved


def test_a_rotated_refresh_token_is_not_written_over_another_refresh_token(
    endpoint: TokenEndpoint, account: Account, fake_dal: Fakes
) -> None:
    """Same settings_version, another grant (e.g. a token written without a version bump)."""
    endpoint.rotate = True
    other = fake_dal.kms.encrypt_refresh_token("other", "acme", "alice", get_settings())
    fake_dal.dal.accounts[("acme", "alice")] = dataclasses.replace(account, refresh_token_ciphertext=other)
    assert oauth_tokens.access_token(account, get_settings()) == "access-1"
    stored = fake_dal.dal.get_account("acme", "alice")
    assert stored is not None and stored.refresh_token_ciphertext == other


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (3599, 3599),
        ("3599", 3599),
        ("²", 3600),  # str.isdigit() is true for it; int() is not
        ("٣٦٠٠", 3600),  # Arabic-Indic digits
        ("1234567", 3600),  # more than six digits
        (10**400, 86400),  # would overflow the cache's float arithmetic
        (5, 60),
        (-1, 60),
        (True, 3600),
        (3599.5, 3600),
        (None, 3600),
    ],
)
def test_expires_in_is_an_integer_clamped_to_a_sane_range(raw: object, seconds: int) -> None:
    body = {"access_token": "access-1", "expires_in": raw}
    assert oauth._tokens(200, body).expires_in == seconds


def test_a_refresh_for_a_sync_job_ends_by_the_jobs_hard_deadline(endpoint: TokenEndpoint, account: Account) -> None:
    settings = get_settings()
    soon = time.monotonic() + 2
    accounts.server_params(account, settings, deadline=soon)
    assert 0 < endpoint.timeouts[0] <= 2 < settings.oauth_http_timeout_seconds
    oauth_tokens.forget_access_token(account)
    with pytest.raises(oauth.TokenEndpointUnavailable):
        oauth_tokens.access_token(account, settings, deadline=time.monotonic() - 1)
    assert endpoint.calls == 1, "no request without time left"


def test_a_token_saved_before_tokens_had_their_own_purpose_is_read_once_and_sealed_again(
    endpoint: TokenEndpoint, account: Account, fake_dal: Fakes
) -> None:
    """Lazy migration: sealed as a password by an earlier build, read as such, re-sealed at once."""
    legacy = fake_dal.kms.encrypt_password(REFRESH, "acme", "alice", get_settings())
    account = dataclasses.replace(account, refresh_token_ciphertext=legacy)
    fake_dal.dal.accounts[("acme", "alice")] = account
    assert oauth_tokens.access_token(account, get_settings()) == "access-1"
    stored = fake_dal.dal.get_account("acme", "alice")
    assert stored is not None and stored.refresh_token_ciphertext != legacy
    assert stored.refresh_token_ciphertext in fake_dal.kms.tokens
    assert fake_dal.kms.plaintexts[stored.refresh_token_ciphertext] == ("acme", "alice", REFRESH)


def test_the_accounts_own_password_blob_is_never_read_as_its_refresh_token(
    endpoint: TokenEndpoint, account: Account, fake_dal: Fakes
) -> None:
    """A password's ciphertext copied into the token field would send the password to the provider."""
    password = fake_dal.kms.encrypt_password("mail password", "acme", "alice", get_settings())
    account = dataclasses.replace(account, refresh_token_ciphertext=password, password_ciphertext=password)
    fake_dal.dal.accounts[("acme", "alice")] = account
    with pytest.raises(PasswordUnreadable):
        oauth_tokens.access_token(account, get_settings())
    assert endpoint.calls == 0
