"""Mail settings use cases: read, save, delete and test a user's mailbox connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailsync import crypto, dal
from mailsync.config import Settings, get_settings
from mailsync.domain import Account
from mailsync.errors import Conflict, Forbidden, MailboxError, NotFound, ValidationFailed
from mailsync.identity import Principal, resolve_target_user
from mailsync.mailbox import ConnectionCheck, ServerParams, open_mailbox_check
from mailsync.netguard import check_host_literal
from mailsync.observability import logger
from mailsync.schemas import (
    MailSettingsIn,
    MailSettingsOut,
    MailSettingsTestIn,
    UserOut,
    UserPageOut,
    default_port,
)
from mailsync.services import scheduling
from mailsync.services.oauth_tokens import access_token, revoke_grant

# Fields whose change means "a different mailbox or login": they reset the account status, and
# the saved password is never sent anywhere but to the combination it was saved with.
_CONNECTION_FIELDS = ("host", "port", "username", "security", "protocol")
REENTER_MESSAGE = "Enter the password again when the server changes"
SETTINGS_CHANGED_MESSAGE = "The settings changed meanwhile; reload and try again"


OPS_FOR_OTHER_SERVER = "The mail settings changed to another server before this change could be applied"


def mailbox_identity(values: Account | dict[str, Any]) -> str:
    """Which mailbox settings reach: protocol, host and user name (security and port are only
    the way there). Pending CRM changes belong to one mailbox."""
    get = values.get if isinstance(values, dict) else (lambda name: getattr(values, name))
    return "\0".join((str(get("protocol")), str(get("host")).lower(), str(get("username"))))


def _settle_pending_ops(target: Target, before: str | None, after: str) -> None:
    """Pending CRM changes recorded for another mailbox can never apply here: fail them."""
    if before is None or before == after:
        return
    state = dal.get_sync_state(target.tenant_id, target.user_id)
    if state is not None and int(state.ops_pending or 0) > 0:
        failed = dal.fail_pending_ops(target.tenant_id, target.user_id, OPS_FOR_OTHER_SERVER)
        logger.info("pending ops failed: mailbox changed", extra={"user_id": target.user_id, "ops": failed})


def settle_pending_ops(tenant_id: str, user_id: str, before: str | None, after: str) -> None:
    """``_settle_pending_ops`` for a mailbox connected by other means (an OAuth2 consent)."""
    _settle_pending_ops(Target(tenant_id, user_id), before, after)


def _saved_connection(account: Account) -> dict[str, object]:
    return {f: (int(account.port) if f == "port" else getattr(account, f)) for f in _CONNECTION_FIELDS}


def _require_password_for(account: Account, wanted: dict[str, object]) -> None:
    """The saved password belongs to the host, port, user name, security and protocol it was
    saved with: anything else must come with the password (admins included), or whoever can
    edit the settings could send it to a server of their choice."""
    if _saved_connection(account) != {f: wanted[f] for f in _CONNECTION_FIELDS}:
        raise ValidationFailed(REENTER_MESSAGE, field="password")


@dataclass(frozen=True)
class Target:
    tenant_id: str
    user_id: str


def target_for(principal: Principal, user_id: str) -> Target:
    """Authorize ``principal`` to act on ``user_id`` (``me`` allowed)."""
    resolved = resolve_target_user(principal, user_id, dal.account_exists)
    return Target(principal.tenant_id, resolved)


def require_account(target: Target) -> Account:
    account = dal.get_account(target.tenant_id, target.user_id)
    if account is None:
        raise NotFound(f"No mail settings saved for user '{target.user_id}'")
    return account


def to_out(account: Account) -> MailSettingsOut:
    return MailSettingsOut(
        user_id=account.user_id,
        host=account.host,
        port=int(account.port),
        username=account.username,
        security=account.security,
        protocol=account.protocol,
        fetch_enabled=account.fetch_enabled,
        keep_copy=account.keep_copy,
        remove_after_days=account.remove_after_days,
        incoming_confidential=account.incoming_confidential,
        outgoing_confidential=account.outgoing_confidential,
        sync_window_days=int(account.sync_window_days),
        password_set=account.password_ciphertext is not None,
        status=account.status,
        last_error=account.last_error,
        created_at=account.created_at,
        updated_at=account.updated_at,
        auth=account.auth,
        provider=account.provider,
        oauth_scopes=account.oauth_scopes.split() if account.oauth_scopes else None,
        connected_at=account.connected_at,
    )


def get_settings_for(principal: Principal, user_id: str) -> MailSettingsOut:
    return to_out(require_account(target_for(principal, user_id)))


def list_users(principal: Principal, limit: int, cursor: str | None) -> UserPageOut:
    """The users of the admin's own tenant that have mail settings, by user id (an admin picks
    whose settings to edit)."""
    if not principal.is_admin:
        raise Forbidden("Only an admin can list the tenant's users")
    accounts, next_cursor = dal.list_accounts(principal.tenant_id, limit, cursor)
    users = [UserOut(user_id=a.user_id, username=a.username, protocol=a.protocol, status=a.status) for a in accounts]
    return UserPageOut(users=users, next_cursor=next_cursor)


def _check_policy(security: str, host: str, settings: Settings) -> None:
    if security == "none" and not settings.allow_insecure:
        raise ValidationFailed(
            "security 'none' sends the password unencrypted and is not allowed by this deployment",
            field="security",
        )
    check_host_literal(host, settings.allow_private_hosts)


def put_settings(principal: Principal, user_id: str, body: MailSettingsIn) -> tuple[MailSettingsOut, bool]:
    """Create or replace the settings; returns (settings, created)."""
    settings = get_settings()
    target = target_for(principal, user_id)
    _check_policy(body.security, body.host, settings)
    if body.remove_after_days is not None and (body.protocol != "pop3" or not body.keep_copy):
        # Only a kept POP3 copy is removed later (keep_copy false removes it once stored).
        raise ValidationFailed(
            "remove_after_days applies to POP3 accounts with keep_copy only", field="remove_after_days"
        )
    account = dal.get_account(target.tenant_id, target.user_id)
    created = account is None
    if created and body.password is None:
        raise ValidationFailed("password is required when mail settings are first saved", field="password")

    values = body.model_dump(exclude={"password"})
    values["port"] = body.port or default_port(body.protocol, body.security)
    if account is not None and body.password is None:
        _require_password_for(account, values)
    if body.password is not None:
        values["password_ciphertext"] = crypto.encrypt_password(
            body.password.get_secret_value(), target.tenant_id, target.user_id, settings
        )
        if account is not None and account.auth == "oauth2":  # a password replaces the OAuth2 grant
            values.update(auth="password", provider=None, oauth_scopes=None, connected_at=None)
            values["refresh_token_ciphertext"] = None
    if account is None:
        state = dal.get_sync_state(target.tenant_id, target.user_id)
        before = state.ops_server if state is not None else None
    else:
        before = mailbox_identity(account)
    _settle_pending_ops(target, before, mailbox_identity(values))
    if account is None:
        values.update(status="pending", last_error=None, settings_version=1)
        values.update(
            scheduling.due_fields(
                target.tenant_id, target.user_id, body.fetch_enabled, "pending", body.protocol, active=True
            )
        )
        if not body.fetch_enabled:
            values["status"] = "disabled"
        created_account = dal.create_account(Account(tenant_id=target.tenant_id, user_id=target.user_id, **values))
        if created_account is None:  # a concurrent PUT created them first
            raise Conflict(SETTINGS_CHANGED_MESSAGE)
        account = created_account
    else:
        changed = any(getattr(account, f) != values[f] for f in _CONNECTION_FIELDS) or body.password is not None
        if changed:
            # New credentials deserve a fresh start: a previous auth_failed must not block them.
            values.update(status="pending", last_error=None, settings_version=int(account.settings_version or 1) + 1)
        status = values.get("status", account.status)
        if not body.fetch_enabled:
            status = "disabled"
        elif status == "disabled":
            status = "pending"
        values["status"] = status
        values.update(
            scheduling.due_fields(
                target.tenant_id, target.user_id, body.fetch_enabled, status, body.protocol, active=True
            )
        )
        # Conditional on what was read: the password check above held for that version only. A
        # concurrent PUT of another server with its password (or a DELETE) in between would
        # otherwise leave this write's host beside that PUT's password.
        read_version = int(account.settings_version or 1)
        kept_password = account.password_ciphertext if body.password is None else None
        updated = dal.update_account_if_version(account, values, read_version, kept_password)
        if updated is None:
            if dal.get_account(target.tenant_id, target.user_id) is None:
                raise NotFound(f"No mail settings saved for user '{target.user_id}'")
            raise Conflict(SETTINGS_CHANGED_MESSAGE)
        if updated.auth == "password" and account.auth == "oauth2":
            revoke_grant(account, settings)  # after the write: a refused write keeps the grant
        account = updated
    logger.info(
        "mail settings saved",
        extra={"tenant_id": target.tenant_id, "user_id": target.user_id, "created_account": created},
    )
    return to_out(account), created


def delete_settings(principal: Principal, user_id: str) -> None:
    """Stop syncing and destroy the credentials (the archived messages stay)."""
    target = target_for(principal, user_id)
    account = require_account(target)
    revoke_grant(account, get_settings())
    dal.delete_account(target.tenant_id, target.user_id)
    # Pending CRM changes outlive the settings: a re-PUT of this mailbox applies them, a PUT of
    # another mailbox fails them (put_settings), instead of leaving them pending for ever.
    dal.forget_sync_state(target.tenant_id, target.user_id, mailbox_identity(account))
    logger.info("mail settings deleted", extra={"tenant_id": target.tenant_id, "user_id": target.user_id})


def server_params(account: Account, settings: Settings, *, deadline: float | None = None) -> ServerParams:
    """Decrypt the password in memory only, for one login (an OAuth2 mailbox: a current access
    token, its refresh done by ``deadline``, a ``time.monotonic()`` instant)."""
    if account.auth == "oauth2" and account.refresh_token_ciphertext is not None:
        return ServerParams(
            host=account.host,
            port=int(account.port),
            username=account.username,
            password="",
            security=account.security,
            protocol=account.protocol,
            access_token=access_token(account, settings, deadline=deadline),
        )
    if account.password_ciphertext is None:
        raise ValidationFailed("No password saved for this mailbox", field="password")
    password = crypto.decrypt_saved_password(account.password_ciphertext, account.tenant_id, account.user_id, settings)
    return ServerParams(
        host=account.host,
        port=int(account.port),
        username=account.username,
        password=password,
        security=account.security,
        protocol=account.protocol,
    )


def record_login_outcome(account: Account, error: MailboxError | None) -> None:
    """Remember what a user-initiated login with the saved settings showed.

    A failed login here counts like one in the sync engine: after auth_failed the account is
    no longer due (mail servers lock accounts after repeated failures) until settings change.
    """
    if error is None:
        status, message = ("ok" if account.fetch_enabled else "disabled"), None
    else:
        status, message = error.code, error.message
    if (account.status, account.last_error) != (status, message):
        due = scheduling.due_fields(account.tenant_id, account.user_id, account.fetch_enabled, status, account.protocol)
        if account.due_shard is not None and due.get("due_shard") is not None:
            due = {}  # already due: keep its place in the schedule
        dal.update_account_status(account, status, message, extra=due)


def test_connection(principal: Principal, user_id: str, body: MailSettingsTestIn | None) -> ConnectionCheck:
    """Log in for real: with the saved settings, or with ``body`` laid over them (unsaved)."""
    settings = get_settings()
    target = target_for(principal, user_id)
    account = dal.get_account(target.tenant_id, target.user_id)
    overrides = body.model_dump(exclude_none=True, exclude={"password"}) if body else {}
    if not overrides and (body is None or body.password is None):
        if account is None:
            raise NotFound(f"No mail settings saved for user '{target.user_id}'")
        return _check_saved(account, settings)

    base: dict[str, object] = {}
    if account is not None:
        base = {f: getattr(account, f) for f in ("host", "username", "security", "protocol")}
        # The saved port goes with the saved host, security and protocol; another of these
        # without a port means that one's default port.
        if all(overrides.get(f, base[f]) == base[f] for f in ("protocol", "security", "host")):
            base["port"] = int(account.port)
    merged = {**base, **overrides}
    for required in ("host", "username"):
        if not merged.get(required):
            raise ValidationFailed(f"{required} is required to test a connection", field=required)
    security = str(merged.get("security", "ssl"))
    protocol = str(merged.get("protocol", "imap"))
    merged.update(
        security=security, protocol=protocol, port=int(merged.get("port") or default_port(protocol, security))
    )
    use_saved = body is None or body.password is None
    if use_saved:
        if account is None or account.password_ciphertext is None:
            raise ValidationFailed("password is required to test a connection", field="password")
        # Before any policy check or connection: the saved password goes nowhere new.
        _require_password_for(account, merged)
    _check_policy(security, str(merged["host"]), settings)
    if body is not None and body.password is not None:
        password = body.password.get_secret_value()
    else:
        assert account is not None and account.password_ciphertext is not None
        password = crypto.decrypt_saved_password(
            account.password_ciphertext, account.tenant_id, account.user_id, settings
        )
    params = ServerParams(
        host=str(merged["host"]),
        port=int(merged["port"]),
        username=str(merged["username"]),
        password=password,
        security=security,
        protocol=protocol,
    )
    return open_mailbox_check(params, settings)


def _check_saved(account: Account, settings: Settings) -> ConnectionCheck:
    try:
        result = open_mailbox_check(server_params(account, settings), settings)
    except MailboxError as exc:
        record_login_outcome(account, exc)
        raise
    record_login_outcome(account, None)
    return result
