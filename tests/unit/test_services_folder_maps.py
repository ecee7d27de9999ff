"""Folder map rules (``mailsync.services.folder_maps``) on the in-memory data layer; the server's
folder list comes from a stand-in session (listing against real servers is in tests/integration)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pydantic import SecretStr

from mailsync.config import Settings
from mailsync.domain import Account
from mailsync.errors import AuthFailed, ValidationFailed
from mailsync.identity import Principal
from mailsync.mailbox import ServerFolder, ServerParams
from mailsync.schemas import MailSettingsIn
from mailsync.services import accounts, folder_maps
from tests.unit.fake_dal import Fakes

ALICE = Principal(user_id="alice", tenant_id="acme", is_admin=False)
ON_SERVER = [
    ServerFolder("INBOX", "/", (), None),
    ServerFolder("Archive", "/", (), "\\Archive"),
    ServerFolder("Sent", "/", (), "\\Sent"),
    ServerFolder("Shared", "/", ("\\Noselect",), None),
]


class ListingSession:
    def list_folders(self) -> list[ServerFolder]:
        return list(ON_SERVER)


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch) -> list[ServerParams]:
    """The server's folders as a session lists them; the logins made, with their parameters."""
    made: list[ServerParams] = []

    @contextmanager
    def open_imap(params: ServerParams, settings: Settings) -> Iterator[ListingSession]:
        made.append(params)
        yield ListingSession()

    monkeypatch.setattr(folder_maps, "open_imap", open_imap)
    return made


def saved_account(fake_dal: Fakes, **overrides: object) -> Account:
    body = {"host": "imap.example.com", "username": "alice", "password": SecretStr("s3cret"), **overrides}
    accounts.put_settings(ALICE, "me", MailSettingsIn.model_validate(body))
    account = fake_dal.dal.get_account("acme", "alice")
    assert account is not None
    return account


def test_before_a_save_the_map_is_the_live_suggestion(fake_dal: Fakes, logins: list[ServerParams]) -> None:
    saved_account(fake_dal)
    out = folder_maps.get_folder_map(ALICE, "me")
    assert (out.saved, out.folders) == (False, {"inbox": "INBOX", "archive": "Archive", "sent": "Sent"})
    # The login used the saved password, decrypted for this one call.
    assert [(p.host, p.password) for p in logins] == [("imap.example.com", "s3cret")]


def test_a_saved_map_makes_a_due_account_sync_now(fake_dal: Fakes, logins: list[ServerParams]) -> None:
    # Given an account due later,
    account = saved_account(fake_dal)
    fake_dal.dal.update_account(account, {"next_sync_at": 2_000_000_000})

    # When a map of existing folders is saved,
    out = folder_maps.put_folder_map(ALICE, "me", {"inbox": "INBOX", "archive": "Archive"})

    # Then it is stored, read back as saved, and the account is due now.
    assert out.saved and folder_maps.get_folder_map(ALICE, "me").folders == {"inbox": "INBOX", "archive": "Archive"}
    assert fake_dal.dal.get_account("acme", "alice").next_sync_at == 0  # type: ignore[union-attr]
    # and active: polled at every tick for a while, at any hour (adaptive polling).
    assert fake_dal.dal.get_account("acme", "alice").last_activity_at == int(out.updated_at.timestamp())  # type: ignore[union-attr]


def test_a_saved_map_leaves_an_account_off_the_schedule_alone(fake_dal: Fakes, logins: list[ServerParams]) -> None:
    saved_account(fake_dal, fetch_enabled=False)
    folder_maps.put_folder_map(ALICE, "me", {"inbox": "INBOX"})
    account = fake_dal.dal.get_account("acme", "alice")
    assert account is not None and account.folder_map == {"inbox": "INBOX"}
    assert (account.due_shard, account.next_sync_at) == (None, None)


@pytest.mark.parametrize(
    ("folder_map", "field"),
    [({"inbox": "INBOX", "archive": "Archiv"}, "archive"), ({"inbox": "INBOX", "shared": "Shared"}, "shared")],
    ids=["missing", "not-selectable"],
)
def test_a_map_naming_a_folder_the_server_cannot_select_is_refused(
    fake_dal: Fakes, logins: list[ServerParams], folder_map: dict[str, str], field: str
) -> None:
    saved_account(fake_dal)
    with pytest.raises(ValidationFailed) as refused:
        folder_maps.put_folder_map(ALICE, "me", folder_map)
    assert refused.value.field == field
    assert fake_dal.dal.get_account("acme", "alice").folder_map is None  # type: ignore[union-attr]


def test_a_failed_login_while_listing_is_recorded_like_a_sync_would(
    fake_dal: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a server that refuses the saved password,
    saved_account(fake_dal)

    def refuse(params: ServerParams, settings: Settings) -> None:
        raise AuthFailed()

    monkeypatch.setattr(folder_maps, "open_imap", refuse)

    # When the folders are listed, Then the error reaches the caller and the account stops being due.
    with pytest.raises(AuthFailed):
        folder_maps.list_server_folders(ALICE, "me")
    account = fake_dal.dal.get_account("acme", "alice")
    assert account is not None and (account.status, account.due_shard, account.next_sync_at) == (
        "auth_failed",
        None,
        None,
    )
