"""Settings come from the environment variables the template sets, under their long-standing names."""

from __future__ import annotations

import pytest

from mailsync.config import Settings, get_settings

RESOURCE_VARIABLES = {
    "ACCOUNTS_TABLE": "accounts_table",
    "MESSAGES_TABLE": "messages_table",
    "IDEMPOTENCY_TABLE": "idempotency_table",
    "RAW_MAIL_BUCKET": "raw_mail_bucket",
    "SYNC_QUEUE_URL": "sync_queue_url",
    "EVENT_BUS_NAME": "event_bus_name",
    "CREDENTIALS_KEY_ID": "credentials_key_id",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RESOURCE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in Settings.model_fields:
        monkeypatch.delenv(f"MAILSYNC_{name.upper()}", raising=False)
    get_settings.cache_clear()


def test_given_the_resource_variables_when_read_then_each_names_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RESOURCE_VARIABLES:
        monkeypatch.setenv(name, f"value-of-{name}")
    settings = Settings()
    assert {name: getattr(settings, field) for name, field in RESOURCE_VARIABLES.items()} == {
        name: f"value-of-{name}" for name in RESOURCE_VARIABLES
    }


def test_given_mailsync_variables_when_read_then_they_set_the_other_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSYNC_IMAP_TIMEOUT_SECONDS", "7.5")
    monkeypatch.setenv("MAILSYNC_DUE_SHARDS", "4")
    monkeypatch.setenv("MAILSYNC_CLAIM_ROLE", "cognito:groups")
    monkeypatch.setenv("MAILSYNC_EXTRA_CA_FILE", "/ca.pem")
    monkeypatch.setenv("MAILSYNC_MAX_POP3_RESPONSE_BYTES", "2048")
    settings = Settings()
    assert (settings.imap_timeout_seconds, settings.due_shards, settings.claim_role) == (7.5, 4, "cognito:groups")
    assert (settings.extra_ca_file, settings.max_pop3_response_bytes) == ("/ca.pem", 2048)


def test_given_empty_variables_when_read_then_the_defaults_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCOUNTS_TABLE", "")
    monkeypatch.setenv("MAILSYNC_IMAP_TIMEOUT_SECONDS", "")
    monkeypatch.setenv("MAILSYNC_EXTRA_CA_FILE", "")
    settings = Settings()
    assert (settings.accounts_table, settings.imap_timeout_seconds, settings.extra_ca_file) == (
        "mailsync-accounts",
        20.0,
        None,
    )


@pytest.mark.parametrize(
    ("raw", "lowered"),
    [("true", True), (" Yes ", True), ("1", True), ("ON", True), ("false", False), ("0", False), ("banana", False)],
)
def test_given_a_guard_variable_when_read_then_only_a_clear_yes_lowers_it(
    monkeypatch: pytest.MonkeyPatch, raw: str, lowered: bool
) -> None:
    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", raw)
    monkeypatch.setenv("MAILSYNC_ALLOW_INSECURE", raw)
    settings = Settings()
    assert (settings.allow_private_hosts, settings.allow_insecure) == (lowered, lowered)


def test_given_an_out_of_range_value_when_read_then_settings_refuse_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILSYNC_DUE_SHARDS", "0")
    with pytest.raises(ValueError, match="due_shards"):
        Settings()


def test_given_a_changed_env_when_the_cache_is_cleared_then_get_settings_reads_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = get_settings()
    monkeypatch.setenv("MAILSYNC_HOST_CONCURRENCY", "9")
    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().host_concurrency == 9
