"""Server folder listing and the CRM-folder to server-folder map."""

from __future__ import annotations

from mailsync import dal
from mailsync.config import get_settings
from mailsync.domain import Account
from mailsync.errors import Conflict, MailboxError
from mailsync.folders import check_folders_exist, suggest, suggested_map, validate_map_shape
from mailsync.identity import Principal
from mailsync.mailbox import ServerFolder, open_mailbox_check
from mailsync.mailbox.connection import open_imap
from mailsync.providers import provider_for_host
from mailsync.schemas import FolderMapOut, ServerFolderOut
from mailsync.services.accounts import record_login_outcome, require_account, server_params, target_for

_POP3_INBOX = ServerFolder(name="INBOX", delimiter=None, flags=(), special_use=None)
POP3_HAS_NO_FOLDERS = (
    "POP3 has no folders: mail fetched over POP3 lands in the CRM folder inbox, so POP3 accounts "
    "have no folder map (it is for IMAP accounts)"
)


def _imap_only(account: Account) -> None:
    if account.protocol == "pop3":
        raise Conflict(POP3_HAS_NO_FOLDERS, field="protocol")


def live_folders(account: Account) -> list[ServerFolder]:
    """List the server's folders now, with the saved settings (POP3 has only INBOX)."""
    settings = get_settings()
    try:
        # Inside the try: a password that no longer decrypts is recorded like a failed login.
        params = server_params(account, settings)
        if params.protocol == "pop3":
            open_mailbox_check(params, settings)
            folders = [_POP3_INBOX]
        else:
            with open_imap(params, settings) as session:
                folders = session.list_folders()
    except MailboxError as exc:
        record_login_outcome(account, exc)
        raise
    record_login_outcome(account, None)
    return folders


def list_server_folders(principal: Principal, user_id: str) -> list[ServerFolderOut]:
    account = require_account(target_for(principal, user_id))
    folders = live_folders(account)
    suggestions = suggest(folders, account.provider or provider_for_host(account.host))
    return [
        ServerFolderOut(
            name=f.name,
            delimiter=f.delimiter,
            flags=list(f.flags),
            special_use=f.special_use,
            suggested=suggestions[f.name],
        )
        for f in folders
    ]


def get_folder_map(principal: Principal, user_id: str) -> FolderMapOut:
    """The saved map, or before any save the live suggestion marked ``saved: false``."""
    account = require_account(target_for(principal, user_id))
    _imap_only(account)
    if account.folder_map is not None:
        return FolderMapOut(folders=dict(account.folder_map), saved=True, updated_at=account.folder_map_updated_at)
    provider = account.provider or provider_for_host(account.host)
    return FolderMapOut(folders=suggested_map(live_folders(account), provider), saved=False)


def put_folder_map(principal: Principal, user_id: str, folder_map: dict[str, str]) -> FolderMapOut:
    account = require_account(target_for(principal, user_id))
    _imap_only(account)
    clean = validate_map_shape(folder_map)
    check_folders_exist(clean, live_folders(account))
    now = dal.utcnow()
    fields: dict = {"folder_map": clean, "folder_map_updated_at": now}
    if account.due_shard is not None:
        # A new map is worth syncing now, not at the next due time (nor the next quiet-hours slot).
        fields.update(next_sync_at=0, last_activity_at=int(now.timestamp()))
    dal.update_account(account, fields)
    return FolderMapOut(folders=clean, saved=True, updated_at=now)
