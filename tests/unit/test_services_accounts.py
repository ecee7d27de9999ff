"""Mail settings rules (``mailsync.services.accounts``) on the in-memory data layer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import SecretStr

from mailsync import dal
from mailsync.config import get_settings
from mailsync.domain import Account, Change
from mailsync.errors import AuthFailed, Conflict, Forbidden, NotFound, ValidationFailed
from mailsync.identity import Principal
from mailsync.schemas import MailSettingsIn
from mailsync.services import accounts
from tests.unit.fake_dal import Fakes, a_message

ALICE = Principal(user_id="alice", tenant_id="acme", is_admin=False)
BOB = Principal(user_id="bob", tenant_id="acme", is_admin=False)
ADMIN = Principal(user_id="root", tenant_id="acme", is_admin=True)
OTHER_ADMIN = Principal(user_id="root", tenant_id="globex", is_admin=True)


def settings_in(password: str | None = "s3cret", **overrides: object) -> MailSettingsIn:
    values: dict[str, object] = {"host": "imap.example.com", "username": "alice@example.com", **overrides}
    if password is not None:
        values["password"] = SecretStr(password)
    return MailSettingsIn.model_validate(values)


def saved(fake_dal: Fakes, user_id: str = "alice") -> Account:
    account = fake_dal.dal.get_account("acme", user_id)
    assert account is not None
    return account


def test_first_save_encrypts_the_password_for_its_owner_and_makes_the_account_due(fake_dal: Fakes) -> None:
    # Given no settings, When alice saves hers,
    out, created = accounts.put_settings(ALICE, "me", settings_in())

    # Then they are created pending and due now, with the password encrypted for alice alone,
    account = saved(fake_dal)
    assert created and out.status == "pending" and out.password_set
    assert (account.due_shard is not None, account.next_sync_at, account.settings_version) == (True, 0, 1)
    assert account.port == 993
    assert fake_dal.kms.plaintexts[account.password_ciphertext] == ("acme", "alice", "s3cret")
    # and the answer never carries the password, in any form.
    dumped = json.dumps(out.model_dump(mode="json"))
    assert "s3cret" not in dumped and "password_ciphertext" not in dumped and "fake-kms" not in dumped


def test_first_save_without_a_password_is_refused(fake_dal: Fakes) -> None:
    with pytest.raises(ValidationFailed) as refused:
        accounts.put_settings(ALICE, "me", settings_in(password=None))
    assert refused.value.field == "password"
    assert fake_dal.dal.accounts == {}


@pytest.mark.parametrize(
    "change",
    [{"host": "imap.evil.example"}, {"port": 1993}, {"username": "other"}, {"security": "starttls"}],
    ids=["host", "port", "username", "security"],
)
def test_another_server_without_the_password_is_refused_and_nothing_changes(fake_dal: Fakes, change: dict) -> None:
    # Given saved settings,
    accounts.put_settings(ALICE, "me", settings_in())
    before = saved(fake_dal)

    # When the connection changes without the password, Then it is refused (admins included)
    with pytest.raises(ValidationFailed) as refused:
        accounts.put_settings(ADMIN, "alice", settings_in(password=None, **change))

    assert (refused.value.field, refused.value.message) == ("password", accounts.REENTER_MESSAGE)
    assert saved(fake_dal) == before


def test_same_server_without_the_password_keeps_it_and_disabling_takes_the_account_off_the_schedule(
    fake_dal: Fakes,
) -> None:
    # Given saved settings,
    accounts.put_settings(ALICE, "me", settings_in())
    before = saved(fake_dal)

    # When only fetching is switched off (no password sent),
    out, created = accounts.put_settings(ALICE, "me", settings_in(password=None, fetch_enabled=False))

    # Then the password and version stay, and the account is disabled and no longer due.
    after = saved(fake_dal)
    assert not created and out.status == "disabled" and out.password_set
    assert after.password_ciphertext == before.password_ciphertext
    assert after.settings_version == before.settings_version
    assert (after.due_shard, after.next_sync_at) == (None, None)

    # When fetching is switched back on, Then it is pending and due again.
    accounts.put_settings(ALICE, "me", settings_in(password=None))
    assert (saved(fake_dal).status, saved(fake_dal).next_sync_at) == ("pending", 0)


def test_new_credentials_reset_a_failed_login_and_bump_the_version(fake_dal: Fakes) -> None:
    # Given settings whose login failed (off the schedule),
    accounts.put_settings(ALICE, "me", settings_in())
    accounts.record_login_outcome(saved(fake_dal), AuthFailed())
    assert (saved(fake_dal).status, saved(fake_dal).due_shard) == ("auth_failed", None)

    # When a new password is saved,
    out, _ = accounts.put_settings(ALICE, "me", settings_in(password="n3w"))

    # Then the account starts afresh: pending, error cleared, due, version 2, the new password.
    account = saved(fake_dal)
    assert (out.status, out.last_error, account.settings_version, account.next_sync_at) == ("pending", None, 2, 0)
    assert fake_dal.kms.plaintexts[account.password_ciphertext][2] == "n3w"


def test_a_pop3_account_is_saved_and_due(fake_dal: Fakes) -> None:
    accounts.put_settings(ALICE, "me", settings_in(protocol="pop3", keep_copy=True, remove_after_days=7))
    account = saved(fake_dal)
    assert (account.port, account.status, account.next_sync_at) == (995, "pending", 0)
    assert account.due_shard is not None and account.remove_after_days == 7


@pytest.mark.parametrize(
    "overrides", [{"protocol": "imap"}, {"protocol": "pop3", "keep_copy": False}], ids=["imap", "no-copy-kept"]
)
def test_remove_after_days_needs_a_pop3_account_that_keeps_a_copy(fake_dal: Fakes, overrides: dict) -> None:
    with pytest.raises(ValidationFailed) as refused:
        accounts.put_settings(ALICE, "me", settings_in(remove_after_days=7, **overrides))
    assert refused.value.field == "remove_after_days" and fake_dal.dal.get_account("acme", "alice") is None


def test_a_racing_save_of_another_password_is_a_conflict(fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given saved settings, and another PUT that writes a new password between our read and write,
    accounts.put_settings(ALICE, "me", settings_in())
    real_update = dal.update_account_if_version

    def racing(
        account: Account, fields: Mapping[str, Any], version: int, ciphertext: bytes | None = None
    ) -> Account | None:
        monkeypatch.setattr(dal, "update_account_if_version", real_update)
        accounts.put_settings(ALICE, "me", settings_in(password="theirs", host="imap.other.example"))
        return real_update(account, fields, version, ciphertext)

    monkeypatch.setattr(dal, "update_account_if_version", racing)

    # When our PUT (same server, no password) writes, Then it is a 409 and the other's settings stand.
    with pytest.raises(Conflict):
        accounts.put_settings(ALICE, "me", settings_in(password=None, sync_window_days=90))
    assert (saved(fake_dal).host, saved(fake_dal).sync_window_days) == ("imap.other.example", 30)


def test_a_racing_first_save_is_a_conflict(fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a concurrent PUT that creates the settings between our read and our create,
    real_create = dal.create_account

    def racing(account: Account) -> Account | None:
        real_create(dataclasses.replace(account, host="imap.first.example"))
        return real_create(account)

    monkeypatch.setattr(dal, "create_account", racing)

    # When ours creates, Then it is a 409 and the first one's settings stand.
    with pytest.raises(Conflict):
        accounts.put_settings(ALICE, "me", settings_in())
    assert saved(fake_dal).host == "imap.first.example"


@pytest.mark.parametrize(
    ("caller", "user_id", "expected"),
    [
        (ALICE, "me", None),
        (ALICE, "alice", None),
        (ADMIN, "alice", None),
        (BOB, "alice", Forbidden),
        (BOB, "nobody", NotFound),
        (OTHER_ADMIN, "alice", NotFound),
    ],
    ids=["owner-me", "owner-by-id", "admin", "colleague", "colleague-unknown-user", "other-tenants-admin"],
)
def test_who_may_read_the_settings(fake_dal: Fakes, caller: Principal, user_id: str, expected: type | None) -> None:
    # Given alice's saved settings,
    accounts.put_settings(ALICE, "me", settings_in())

    # When someone reads them, Then only alice and her tenant's admins can; others learn nothing.
    if expected is None:
        out = accounts.get_settings_for(caller, user_id)
        assert (out.user_id, out.host, out.password_set) == ("alice", "imap.example.com", True)
    else:
        with pytest.raises(expected):
            accounts.get_settings_for(caller, user_id)


def test_delete_keeps_pending_ops_for_the_same_mailbox_and_fails_them_for_another(fake_dal: Fakes) -> None:
    # Given settings and a CRM change waiting for the mailbox,
    accounts.put_settings(ALICE, "me", settings_in())
    message = a_message(fake_dal, "m1")
    dal.record_changes(message, [Change("seen", seen=True)], {"seen": True})

    # When the settings are deleted,
    accounts.delete_settings(ALICE, "me")

    # Then the account is gone but the op still waits, remembered for that mailbox;
    assert fake_dal.dal.get_account("acme", "alice") is None
    state = fake_dal.dal.get_sync_state("acme", "alice")
    assert state is not None and state.ops_pending == 1
    assert state.ops_server == accounts.mailbox_identity(settings_in().model_dump())
    assert len(fake_dal.dal.ops_waiting("acme", "alice")) == 1

    # When settings for another mailbox are saved, Then the op fails and the message says why.
    accounts.put_settings(ALICE, "me", settings_in(host="imap.new.example"))
    assert fake_dal.dal.ops_waiting("acme", "alice") == []
    failed = fake_dal.dal.find_message("m1")
    assert failed is not None and (failed.pending_ops, failed.last_op_error) == (0, accounts.OPS_FOR_OTHER_SERVER)


def test_a_login_outcome_read_before_a_settings_change_is_not_written(fake_dal: Fakes) -> None:
    # Given an account read, then its settings changed (new password: version 2),
    accounts.put_settings(ALICE, "me", settings_in())
    stale = saved(fake_dal)
    accounts.put_settings(ALICE, "me", settings_in(password="n3w"))

    # When the failed login with the old settings is recorded, Then it does not stick.
    accounts.record_login_outcome(stale, AuthFailed())
    assert (saved(fake_dal).status, saved(fake_dal).next_sync_at) == ("pending", 0)


def test_the_saved_password_is_decrypted_only_for_its_owner(fake_dal: Fakes) -> None:
    # Given alice's saved password copied onto bob's account,
    accounts.put_settings(ALICE, "me", settings_in())
    copied = dataclasses.replace(saved(fake_dal), user_id="bob")

    # When bob's login parameters are built, Then the password is unreadable (enter it again).
    assert accounts.server_params(saved(fake_dal), get_settings()).password == "s3cret"
    with pytest.raises(AuthFailed):
        accounts.server_params(copied, get_settings())
