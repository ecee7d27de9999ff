"""Courier-IMAP 5.0 quirks, on the real server.

A Courier folder that has never held a message has no stored UIDVALIDITY: every STATUS or
EXAMINE reports the current second as a new one. Mapped folders are often like that (an empty
Trash or Sent), so the users here come from ``courier.add_user(used=False)``.

Timing: Courier's value changes once per second, so whether two reads differ depends on the
clock. The tests do not leave that to chance: before the read that matters they wait (with a
budget) until another connection sees the empty folder report a different UIDVALIDITY than the
sync's snapshot, so the engine's own read is certain to see it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from devstack.courier import CourierServer
from devstack.dovecot import MailUser
from mailsync.sync.engine import AccountSync, FolderWork
from mailsync.sync.planner.folders import ServerStatus
from tests.conftest import ApiCall
from tests.integration.sync_support import Account, connect_account, days_ago, message

MAPPED = ("inbox", "sent", "archive", "trash")
# Courier's UIDVALIDITY follows its clock's second; the budget is for a loaded machine, and costs
# nothing when the tick comes.
UIDVALIDITY_BUDGET_SECONDS = 30.0


@pytest.fixture
def courier_env(courier: CourierServer, local_mail_env, monkeypatch: pytest.MonkeyPatch) -> CourierServer:
    from mailsync.config import get_settings

    monkeypatch.setenv("MAILSYNC_EXTRA_CA_FILE", str(courier.ca_file))
    get_settings.cache_clear()
    return courier


def uidvalidity(user: MailUser, folder: str) -> int:
    with user.client() as client:
        return int(client.imap.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])


def wait_for_new_uidvalidity(user: MailUser, folder: str, old: int) -> int:
    """The folder's UIDVALIDITY once Courier reports one other than ``old`` (within a budget)."""
    deadline = time.monotonic() + UIDVALIDITY_BUDGET_SECONDS
    with user.client() as client:
        while True:
            value = int(client.imap.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])
            if value != old:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{folder} kept UIDVALIDITY {old}: not a never-used Courier folder")
            time.sleep(0.05)  # polling the server's clock tick, not waiting for our own work


def stored_uidvalidity(account: Account, folder: str) -> int:
    from mailsync import dal

    state = dal.get_sync_state(account.tenant, account.caller.user)
    assert state is not None
    return int(state.folders[folder]["uidvalidity"])


def connect(api: ApiCall, courier: CourierServer, user: MailUser) -> Account:
    return connect_account(api, user, {crm: courier.folders[crm] for crm in MAPPED})


def test_a_deletion_by_another_client_is_picked_up_in_one_sync_beside_never_used_folders(
    api: ApiCall, courier_env: CourierServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    courier = courier_env
    user = courier.add_user(used=False)
    trash = courier.folders["trash"]
    account = connect(api, courier, user)
    with user.client() as imap:
        gone = imap.append("INBOX", message("delete me", days=1), internal_date=days_ago(1))
        imap.append("INBOX", message("keep me", days=1), internal_date=days_ago(1))
    assert account.sync().status == "synced"
    assert set(account.synced()) == {"delete me", "keep me"}

    with user.client() as imap:  # the user's other mail program
        imap.expunge("INBOX", gone)

    # Between the sync's STATUS snapshot and its check for later changes, the clock ticks past
    # the snapshot's second: the empty Trash reports a new UIDVALIDITY to that check.
    seen: dict[str, int] = {}
    original: Callable[[AccountSync], bool] = AccountSync._changed_since_snapshot

    def after_a_tick(self: AccountSync) -> bool:
        seen["snapshot"] = self.snapshots[trash].uidvalidity
        seen["later"] = wait_for_new_uidvalidity(user, trash, seen["snapshot"])
        return original(self)

    monkeypatch.setattr(AccountSync, "_changed_since_snapshot", after_a_tick)
    result = account.sync()
    assert result.status == "synced", result

    assert seen and seen["later"] != seen["snapshot"], seen
    after = account.by_subject()
    assert (after["delete me"]["state"], after["delete me"]["detach_reason"]) == ("detached", "removed")
    assert after["keep me"]["state"] == "synced"


def test_a_never_used_folder_with_a_new_uidvalidity_is_not_resynced(api: ApiCall, courier_env: CourierServer) -> None:
    courier = courier_env
    user = courier.add_user(used=False)
    trash, sent = courier.folders["trash"], courier.folders["sent"]
    account = connect(api, courier, user)
    with user.client() as imap:
        imap.append("INBOX", message("hello", days=1), internal_date=days_ago(1))
    first = account.sync()
    assert first.status == "synced", first
    before = {f: stored_uidvalidity(account, f) for f in (trash, sent)}
    for folder, value in before.items():
        wait_for_new_uidvalidity(user, folder, value)

    again = account.sync()
    assert again.status == "synced", again

    # Nothing to relink or detach: the empty folders are neither resynced nor re-checkpointed
    # (a resync would EXAMINE and SEARCH each and store the new UIDVALIDITY).
    assert {f: stored_uidvalidity(account, f) for f in (trash, sent)} == before
    assert set(account.synced()) == {"hello"}

    # And once mail lands in such a folder it is synced as usual.
    with user.client() as imap:
        imap.append(trash, message("binned", days=1), internal_date=days_ago(1))
    assert account.sync().status == "synced"
    binned = account.synced()["binned"]
    assert (binned["folder"], binned["server_folder"]) == ("trash", trash)
    assert stored_uidvalidity(account, trash) == uidvalidity(user, trash) != before[trash]


def test_a_new_uidvalidity_seen_only_by_examine_is_no_reset_either(
    api: ApiCall, courier_env: CourierServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Courier has no CONDSTORE, so a folder whose STATUS matches the last sync is scanned
    # (EXAMINE). When the last sync's value and this STATUS fall in the same second, the EXAMINE
    # a second later is the first to see the new UIDVALIDITY. That coincidence is set up here:
    # the stored value is made the one STATUS reported, and EXAMINE waits for the tick.
    courier = courier_env
    user = courier.add_user(used=False)
    trash = courier.folders["trash"]
    account = connect(api, courier, user)
    assert account.sync().status == "synced"

    seen: dict[str, int] = {}
    original = AccountSync._prepare_folder

    def same_second(self: AccountSync, server_folder: str, status: ServerStatus) -> FolderWork | None:
        if server_folder == trash:
            seen["status"] = status.uidvalidity
            self.checkpoint = self.checkpoint.with_folder(trash, uidvalidity=status.uidvalidity)
            seen["examine"] = wait_for_new_uidvalidity(user, trash, status.uidvalidity)
        return original(self, server_folder, status)

    monkeypatch.setattr(AccountSync, "_prepare_folder", same_second)
    result = account.sync()
    assert result.status == "synced", result

    # Not taken for a reset: no resync of the empty folder, whose state stays as STATUS saw it.
    assert seen["examine"] != seen["status"], seen
    assert stored_uidvalidity(account, trash) == seen["status"]
