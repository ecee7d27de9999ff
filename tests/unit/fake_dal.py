"""An in-memory data layer for unit tests of the services, and recorders for the AWS edges.

``FakeDal`` implements the ``mailsync.dal`` functions the services call, under the same names
and parameters, on dicts of domain values, with the same conditional outcomes as
``mailsync/dal/_store.py`` (None, False or ``NotFound`` where a condition fails there; cursors
as opaque strings with ``BadCursor`` for one this listing did not hand out). The ``fake_dal``
fixture installs it on the ``mailsync.dal`` module, where the services look names up on each
call; every other dal function raises, so a service reaching past the fake fails loudly instead
of trying to reach DynamoDB.

``tests/unit/test_fake_dal.py`` keeps the fake's signatures equal to the real ones.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from pynamodb.exceptions import TransactWriteError

from mailsync import dal
from mailsync.blobstore import raw_key
from mailsync.config import Settings, get_settings
from mailsync.crypto import PasswordUnreadable
from mailsync.domain import (
    Account,
    Address,
    Change,
    DueAccount,
    Location,
    Message,
    OAuthConsent,
    OfficeHours,
    Op,
    SyncState,
    TenantSettings,
    ThreadMark,
)
from mailsync.errors import NotFound
from mailsync.events import Event

# The dal names the fake does not provide: the sync core's (the engine, the pusher and the job
# runner are exercised against real servers and moto in tests/integration). Names that are not
# functions over storage (the two exception classes, the clock and a constant) stay the real ones.
NOT_IMPLEMENTED = frozenset(
    {
        "aged_out",
        "count_attempt",
        "create_relay_address",  # relay addresses and relayed mail: tests/integration/test_relay.py (moto)
        "drop",
        "find_locations",
        "finish_op",
        "folder_locations",
        "forget_folder_windows",
        "forget_pop_seen",  # POP3 sync state: tests/integration/test_pop3_sync.py (moto + Dovecot)
        "get_account_and_sync_state",
        "get_accounts_and_sync_states",
        "give_back_lease",
        "idempotency_store",  # Powertools Idempotency on its own table: the POST path is an integration test
        "ids_for_match_key",
        "list_accounts",  # the admin's user picker: tests/integration/test_api_users.py (moto)
        "pop_seen",
        "record_pop_seen",
        "relay_address_of",
        "relay_user",
        "relink",
        "save_checkpoint",
        "rotate_relay_address",
        "set_flags",
        "store_relayed",
        "take_lease",
    }
)
NOT_REPLACED = frozenset({"BadCursor", "Unstorable", "utcnow", "TENANT_SETTINGS_MAX_AGE_SECONDS"})


def _now() -> datetime:
    return datetime.now(UTC)


def _with(value: Any, fields: Mapping[str, Any]) -> Any:
    """``value`` with ``fields`` written as the store writes them: None removes an attribute
    (it reads back as the dataclass default) and lists read back as tuples."""
    defaults = {f.name: f for f in dataclasses.fields(value)}
    changes: dict[str, Any] = {}
    for name, new in fields.items():
        spec = defaults[name]  # an unknown attribute is a bug in the caller, as in set_actions
        if new is None and spec.default is not dataclasses.MISSING:
            new = spec.default
        elif isinstance(new, list) and isinstance(getattr(value, name), tuple):
            new = tuple(new)
        changes[name] = new
    return dataclasses.replace(value, **changes)


def _sort_key(message: Message) -> tuple[str, str]:
    return message.internal_date.astimezone(UTC).isoformat(), message.id


def _encode_cursor(listing: list[str], last: tuple[str, str]) -> str:
    raw = json.dumps({"listing": listing, "after": list(last)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str | None, listing: list[str]) -> tuple[str, str] | None:
    if not cursor:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode("ascii")))
    except (binascii.Error, ValueError, UnicodeError):
        raise dal.BadCursor() from None
    after = key.get("after") if isinstance(key, dict) else None
    if set(key) != {"listing", "after"} or not (
        isinstance(after, list) and len(after) == 2 and all(isinstance(a, str) for a in after)
    ):
        raise dal.BadCursor()
    if key["listing"] != listing:
        raise dal.BadCursor("cursor does not belong to this listing")
    return after[0], after[1]


def _page(
    messages: list[Message], listing: list[str], limit: int, cursor: str | None
) -> tuple[list[Message], str | None]:
    """Newest first from after the cursor; a full page carries a cursor (as DynamoDB's limit
    does: the next page may then be empty)."""
    after = _decode_cursor(cursor, listing)
    ordered = sorted(messages, key=_sort_key, reverse=True)
    if after is not None:
        ordered = [m for m in ordered if _sort_key(m) < after]
    page = ordered[:limit]
    return page, (_encode_cursor(listing, _sort_key(page[-1])) if len(page) == limit else None)


@dataclass
class FakeDal:
    """Accounts, sync states, messages, locations, ops and privacy settings in dicts."""

    accounts: dict[tuple[str, str], Account] = field(default_factory=dict)
    states: dict[tuple[str, str], SyncState] = field(default_factory=dict)
    op_seqs: dict[tuple[str, str], int] = field(default_factory=dict)
    ops: dict[tuple[str, str, int], Op] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    locations: dict[tuple[str, str, str, int, int], Location] = field(default_factory=dict)
    tenants: dict[str, TenantSettings] = field(default_factory=dict)
    office_hours: dict[str, OfficeHours] = field(default_factory=dict)
    threads: dict[tuple[str, str, str], ThreadMark] = field(default_factory=dict)
    consents: dict[str, OAuthConsent] = field(default_factory=dict)

    # --- OAuth2 consents under way -----------------------------------------------------------

    def save_consent(self, consent: OAuthConsent) -> None:
        assert consent.nonce not in self.consents
        self.consents[consent.nonce] = consent

    def find_consent(self, nonce: str) -> OAuthConsent | None:
        return self.consents.get(nonce)

    def take_consent(self, nonce: str, valid: Callable[[OAuthConsent], bool] | None = None) -> OAuthConsent | None:
        consent = self.consents.get(nonce)
        if consent is None or (valid is not None and not valid(consent)):
            return None
        return self.consents.pop(nonce)

    # --- accounts ---------------------------------------------------------------------------

    def get_account(self, tenant_id: str, user_id: str) -> Account | None:
        return self.accounts.get((tenant_id, user_id))

    def oauth_grant_holders(self, tenant_id: str, provider: str, username: str) -> list[str]:
        return [
            a.user_id
            for (tenant, _), a in self.accounts.items()
            if tenant == tenant_id
            and a.auth == "oauth2"
            and a.provider == provider
            and a.refresh_token_ciphertext is not None
            and a.username.lower() == username.lower()
        ]

    def account_exists(self, tenant_id: str, user_id: str) -> bool:
        return self.get_account(tenant_id, user_id) is not None

    def create_account(self, account: Account) -> Account | None:
        key = (account.tenant_id, account.user_id)
        if key in self.accounts:
            return None
        now = _now()
        stored = dataclasses.replace(account, created_at=account.created_at or now, updated_at=now)
        self.accounts[key] = stored
        return stored

    def put_accounts(self, accounts: Iterable[Account]) -> None:
        for account in accounts:
            self.accounts[(account.tenant_id, account.user_id)] = account

    def update_account(self, account: Account, fields: Mapping[str, Any]) -> Account:
        key = (account.tenant_id, account.user_id)
        if key not in self.accounts:
            raise NotFound(f"No mail settings saved for user '{account.user_id}'")
        fields = {**fields, "updated_at": _now()}
        self.accounts[key] = _with(self.accounts[key], fields)
        return _with(account, fields)

    def update_account_if_version(
        self,
        account: Account,
        fields: Mapping[str, Any],
        version: int,
        ciphertext: bytes | None = None,
        *,
        refresh_token_ciphertext: bytes | None = None,
    ) -> Account | None:
        stored = self.accounts.get((account.tenant_id, account.user_id))
        if stored is None or stored.settings_version != version:
            return None
        if ciphertext is not None and stored.password_ciphertext != ciphertext:
            return None
        if refresh_token_ciphertext is not None and stored.refresh_token_ciphertext != refresh_token_ciphertext:
            return None
        return self.update_account(account, fields)

    def update_account_status(
        self, account: Account, status: str, last_error: str | None, *, extra: Mapping[str, Any] | None = None
    ) -> bool:
        key = (account.tenant_id, account.user_id)
        stored = self.accounts.get(key)
        if stored is None or stored.settings_version != account.settings_version:
            return False
        fields = {"status": status, "last_error": last_error, "updated_at": _now(), **(extra or {})}
        self.accounts[key] = _with(stored, fields)
        return True

    def delete_account(self, tenant_id: str, user_id: str) -> None:
        self.accounts.pop((tenant_id, user_id), None)

    def due_accounts(self, shard: int, now: int, limit: int | None = None) -> Iterator[DueAccount]:
        due = sorted(
            (a for a in self.accounts.values() if a.due_shard == shard and a.next_sync_at is not None),
            key=lambda a: a.next_sync_at or 0,
        )
        found = [
            DueAccount(a.tenant_id, a.user_id, a.next_sync_at or 0, a.last_activity_at)
            for a in due
            if (a.next_sync_at or 0) <= now
        ]
        yield from found[:limit] if limit is not None else found

    def record_activity(self, tenant_id: str, user_id: str, at: int) -> None:
        key = (tenant_id, user_id)
        if key in self.accounts:
            self.accounts[key] = dataclasses.replace(self.accounts[key], last_activity_at=at)

    # --- sync state -------------------------------------------------------------------------

    def get_sync_state(self, tenant_id: str, user_id: str) -> SyncState | None:
        return self.states.get((tenant_id, user_id))

    def forget_sync_state(self, tenant_id: str, user_id: str, ops_server: str) -> None:
        state = self.states.get((tenant_id, user_id))
        if state is None:
            return
        self.states[(tenant_id, user_id)] = dataclasses.replace(
            state,
            lease_owner=None,
            lease_expires=None,
            last_started_at=None,
            last_success_at=None,
            last_error=None,
            last_sweep_at=None,
            state="never",
            failures=0,
            folders={},
            ops_server=ops_server,
        )

    def _add_ops_pending(self, tenant_id: str, user_id: str, delta: int) -> None:
        state = self.states.get((tenant_id, user_id)) or SyncState()
        self.states[(tenant_id, user_id)] = dataclasses.replace(state, ops_pending=state.ops_pending + delta)

    def _new_op(self, tenant_id: str, user_id: str, id: str, change: Change) -> Op:
        # The counter lives on the state item: taking a number creates it, as in the store.
        self.states.setdefault((tenant_id, user_id), SyncState())
        seq = self.op_seqs.get((tenant_id, user_id), 0) + 1
        self.op_seqs[(tenant_id, user_id)] = seq
        return Op(seq, tenant_id, user_id, change.kind, id, change.seen, change.folder, _now())

    # --- messages ---------------------------------------------------------------------------

    def find_message(self, id: str) -> Message | None:
        return self.messages.get(id)

    def find_messages(self, ids: Iterable[str]) -> dict[str, Message]:
        return {i: self.messages[i] for i in set(ids) if i in self.messages}

    def list_messages(
        self,
        tenant_id: str,
        user_id: str,
        *,
        folder: str | None,
        since: datetime | None,
        seen: bool | None,
        limit: int,
        cursor: str | None,
        include_confidential: bool = True,
    ) -> tuple[list[Message], str | None]:
        listing = ["messages", tenant_id, user_id, folder or ""]
        after = _decode_cursor(cursor, listing)
        if after is not None and since is not None and after[0] < since.astimezone(UTC).isoformat():
            raise dal.BadCursor("cursor is older than since: start again without the cursor")
        wanted = [
            m
            for m in self.messages.values()
            if (m.tenant_id, m.user_id) == (tenant_id, user_id)
            and (folder is None or m.folder == folder)
            and (since is None or m.internal_date >= since)
            and (seen is None or m.seen == seen)
            and (include_confidential or not m.confidential)
        ]
        return _page(wanted, listing, limit, cursor)

    def count_locations(self, tenant_id: str, user_id: str, server_folder: str) -> int:
        return sum(1 for key in self.locations if key[:3] == (tenant_id, user_id, server_folder))

    def record_changes(self, message: Message, changes: list[Change], shown: Mapping[str, Any]) -> None:
        ops = [self._new_op(message.tenant_id, message.user_id, message.id, change) for change in changes]
        stored = self.messages.get(message.id)
        if stored is None:  # the transaction's condition: numbers taken, nothing else written
            raise TransactWriteError("ConditionalCheckFailed: the message is gone")
        for op in ops:
            self.ops[(op.tenant_id, op.user_id, op.seq)] = op
        self.messages[message.id] = _with(stored, {**shown, "pending_ops": stored.pending_ops + len(ops)})
        self._add_ops_pending(message.tenant_id, message.user_id, len(ops))

    def create_outgoing(self, message: Message) -> Message:
        op = self._new_op(message.tenant_id, message.user_id, message.id, Change("append"))
        if message.id in self.messages:
            raise TransactWriteError("ConditionalCheckFailed: the message exists")
        now = _now()
        stored = dataclasses.replace(
            message, created_at=message.created_at or now, updated_at=message.updated_at or now
        )
        self.messages[message.id] = stored
        self.ops[(op.tenant_id, op.user_id, op.seq)] = op
        self._add_ops_pending(message.tenant_id, message.user_id, 1)
        return stored

    def fail_pending_ops(self, tenant_id: str, user_id: str, error: str) -> int:
        failed = self.ops_waiting(tenant_id, user_id)
        for op in failed:
            del self.ops[(tenant_id, user_id, op.seq)]
            self._add_ops_pending(tenant_id, user_id, -1)
        for id_ in {op.id for op in failed}:
            if id_ in self.messages:
                self.messages[id_] = _with(
                    self.messages[id_], {"pending_ops": 0, "last_op_error": error, "updated_at": _now()}
                )
        return len(failed)

    def ops_waiting(self, tenant_id: str, user_id: str) -> list[Op]:
        return [op for key, op in sorted(self.ops.items()) if key[:2] == (tenant_id, user_id)]

    def store_new_messages(self, rows: list[tuple[Message, Location]]) -> None:
        for message, location in rows:
            self.messages[message.id] = message
            self.locations[self._location_key(location)] = location

    def detach(self, message: Message, location: Location, reason: str, *, first: bool = False) -> None:
        now = _now()
        self.messages[message.id] = _with(
            self.messages.get(message.id, message),
            {"state": "detached", "detach_reason": reason, "detached_at": now, "updated_at": now},
        )
        self.locations.pop(self._location_key(location), None)
        if first:
            account = (message.tenant_id, message.user_id)
            self.states[account] = dataclasses.replace(self.states.get(account) or SyncState(), has_detached=True)

    @staticmethod
    def _location_key(location: Location) -> tuple[str, str, str, int, int]:
        return location.tenant_id, location.user_id, location.server_folder, location.uidvalidity, location.uid

    # --- confidentiality --------------------------------------------------------------------

    def get_tenant_settings(self, tenant_id: str, *, max_age: float = 0.0) -> TenantSettings | None:
        return self.tenants.get(tenant_id)

    def forget_tenant_settings(self) -> None:
        pass  # nothing is kept apart from the store

    def save_tenant_settings(self, tenant_id: str, keywords: list[str], contacts: list[str]) -> TenantSettings:
        saved = TenantSettings(confidential_keywords=tuple(keywords), confidential_contacts=tuple(contacts))
        self.tenants[tenant_id] = saved
        return saved

    def get_office_hours(self, tenant_id: str, *, max_age: float = 0.0) -> OfficeHours | None:
        return self.office_hours.get(tenant_id)

    def save_office_hours(self, tenant_id: str, hours: OfficeHours) -> OfficeHours:
        self.office_hours[tenant_id] = hours
        return hours

    def thread_marks(self, tenant_id: str, user_id: str, thread_ids: Iterable[str]) -> dict[str, ThreadMark]:
        found = {t: self.threads.get((tenant_id, user_id, t)) for t in set(thread_ids)}
        return {t: mark for t, mark in found.items() if mark is not None}

    def mark_threads(
        self, tenant_id: str, user_id: str, thread_ids: Iterable[str], *, confidential: bool, by_owner: bool
    ) -> None:
        for thread_id in thread_ids:
            self.threads[(tenant_id, user_id, thread_id)] = ThreadMark(confidential=confidential, by_owner=by_owner)

    def thread_member_ids(self, tenant_id: str, user_id: str, thread_id: str) -> list[str]:
        # The store writes a member item per message stored; here membership is read off the messages.
        return sorted(
            m.id
            for m in self.messages.values()
            if (m.tenant_id, m.user_id, m.thread_id) == (tenant_id, user_id, thread_id)
        )

    def set_confidential(self, message: Message, confidential: bool, reasons: list[str]) -> Message:
        fields = {"confidential": confidential, "confidential_reasons": tuple(reasons), "updated_at": _now()}
        if message.id in self.messages:
            self.messages[message.id] = _with(self.messages[message.id], fields)
        return _with(message, fields)

    def contact_messages(
        self, tenant_id: str, address: str, viewer: str, limit: int, cursor: str | None
    ) -> tuple[list[str], str | None]:
        # The store keeps a dossier index beside the messages; here it is read off the messages.
        wanted = [
            m
            for m in self.messages.values()
            if m.tenant_id == tenant_id
            and address in m.dossier_addresses()
            and (not m.confidential or m.user_id == viewer)
        ]
        page, next_cursor = _page(wanted, ["contact", tenant_id, address], limit, cursor)
        return [m.id for m in page], next_cursor

    def open_connections(self) -> None:
        """Nothing to open in memory."""

    # --- what the fake provides -------------------------------------------------------------

    @classmethod
    def provided(cls) -> list[str]:
        """The dal names this class implements (its public functions, ``provided`` aside)."""
        return sorted(
            name
            for name, value in vars(cls).items()
            if not name.startswith("_") and callable(value) and name != "provided"
        )


# --- the AWS edges ----------------------------------------------------------------------------


@dataclass
class FakeKms:
    """Password encryption bound to tenant and user, like KMS's encryption context; every
    ciphertext is new (KMS's random nonce), so equal passwords never give equal ciphertexts."""

    plaintexts: dict[bytes, tuple[str, str, str]] = field(default_factory=dict)
    # Ciphertexts sealed for the refresh-token purpose (the others are passwords').
    tokens: set[bytes] = field(default_factory=set)

    def encrypt_password(self, password: str, tenant_id: str, user_id: str, settings: Settings) -> bytes:
        ciphertext = b"fake-kms:" + os.urandom(12)
        self.plaintexts[ciphertext] = (tenant_id, user_id, password)
        return ciphertext

    def decrypt_saved_password(self, ciphertext: bytes, tenant_id: str, user_id: str, settings: Settings) -> str:
        owner_tenant, owner_user, password = self.plaintexts.get(ciphertext, ("", "", ""))
        if (owner_tenant, owner_user) != (tenant_id, user_id) or ciphertext in self.tokens:
            raise PasswordUnreadable()
        return password

    # Every fake ciphertext stands for an envelope blob (no direct-KMS ones here).
    decrypt_envelope_password = decrypt_saved_password

    def encrypt_refresh_token(self, token: str, tenant_id: str, user_id: str, settings: Settings) -> bytes:
        ciphertext = self.encrypt_password(token, tenant_id, user_id, settings)
        self.tokens.add(ciphertext)
        return ciphertext

    def decrypt_refresh_token(self, ciphertext: bytes, tenant_id: str, user_id: str, settings: Settings) -> str:
        owner_tenant, owner_user, token = self.plaintexts.get(ciphertext, ("", "", ""))
        if (owner_tenant, owner_user) != (tenant_id, user_id) or ciphertext not in self.tokens:
            raise PasswordUnreadable()
        return token


@dataclass
class FakeBlobs:
    objects: dict[str, bytes] = field(default_factory=dict)

    def put_raw(self, tenant_id: str, user_id: str, raw: bytes) -> tuple[str, str]:
        sha = hashlib.sha256(raw).hexdigest()
        key = raw_key(tenant_id, user_id, sha)
        self.objects[key] = raw
        return key, sha

    def get_raw(self, key: str, sha256: str | None = None) -> bytes:
        return self.objects[key]

    def presigned_url(
        self, key: str, expires_seconds: int = 300, filename: str = "message.eml", sha256: str | None = None
    ) -> str:
        return f"https://blobs.invalid/{key}?expires={expires_seconds}&filename={filename}"


@dataclass
class FakeQueue:
    """Sync jobs sent, as parsed bodies with their delay; ``fail_next`` positions of the next
    batch are refused once (SQS's partial batch failure)."""

    sent: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)

    def send(self, body: str, delay_seconds: int = 0) -> None:
        self.sent.append((json.loads(body), delay_seconds))

    def send_batch(self, bodies: list[str]) -> list[int]:
        self.batches.append(len(bodies))
        failed, self.fail_next = [i for i in self.fail_next if i < len(bodies)], []
        for i, body in enumerate(bodies):
            if i not in failed:
                self.sent.append((json.loads(body), 0))
        return failed

    def jobs(self) -> list[tuple[str, str, str]]:
        """One entry per account: a group's accounts each, a single-account body as itself."""
        out = []
        for body, _ in self.sent:
            accounts = body.get("accounts") or [(body["tenant_id"], body["user_id"])]
            out.extend((tenant, user, body["reason"]) for tenant, user in accounts)
        return out


@dataclass
class FakeEvents:
    published: list[Event] = field(default_factory=list)

    def publish(self, events: list[Event]) -> int:
        self.published.extend(events)
        return 0


@dataclass
class Fakes:
    dal: FakeDal
    kms: FakeKms
    blobs: FakeBlobs
    queue: FakeQueue
    events: FakeEvents


def _unavailable(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{name} is not available in unit tests (not in FakeDal, or an AWS client)")

    return refuse


@pytest.fixture
def fake_dal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    """The services on an in-memory data layer, with KMS, S3, SQS and EventBridge recorded."""
    import mailsync.aws
    from mailsync import blobstore, crypto, events, queue

    fakes = Fakes(FakeDal(), FakeKms(), FakeBlobs(), FakeQueue(), FakeEvents())
    provided = set(FakeDal.provided())
    for name in dal.__all__:
        if name in NOT_REPLACED:
            continue
        replacement = getattr(fakes.dal, name) if name in provided else _unavailable(f"dal.{name}")
        monkeypatch.setattr(dal, name, replacement)
    for module, recorder, names in (
        (
            crypto,
            fakes.kms,
            (
                "encrypt_password",
                "decrypt_saved_password",
                "decrypt_envelope_password",
                "encrypt_refresh_token",
                "decrypt_refresh_token",
            ),
        ),
        (blobstore, fakes.blobs, ("put_raw", "get_raw", "presigned_url")),
        (queue, fakes.queue, ("send", "send_batch")),
        (events, fakes.events, ("publish",)),
    ):
        for name in names:
            monkeypatch.setattr(module, name, getattr(recorder, name))
    # Anything else that would build a boto3 client fails at once instead of looking for credentials.
    real_client = mailsync.aws.client
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("mailsync") and getattr(module, "client", None) is real_client:
            monkeypatch.setattr(module, "client", _unavailable(f"{module_name}.client"))
    for key in [k for k in os.environ if k.startswith("MAILSYNC_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MAILSYNC_DUE_SHARDS", "4")
    get_settings.cache_clear()
    yield fakes
    get_settings.cache_clear()


# --- builders ---------------------------------------------------------------------------------

WHEN = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def a_message(fakes: Fakes, id: str, *, uid: int | None = None, **overrides: Any) -> Message:
    """A synced message of alice's (acme) in INBOX, stored with its location; ``overrides``
    are ``Message`` attributes."""
    values: dict[str, Any] = {
        "tenant_id": "acme",
        "user_id": "alice",
        "folder": "inbox",
        "server_folder": "INBOX",
        "internal_date": WHEN,
        "size": 100,
        "match_key": f"mid:<{id}@example.com>",
        "s3_key": f"raw/{id}.eml",
        "content_hash": id,
        "thread_id": f"t-{id}",
        "uidvalidity": 7,
        "subject": f"Subject {id}",
        "from_": (Address("carol@client.example"),),
        "to": (Address("alice@example.com"),),
        **overrides,
    }
    message = Message(id=id, uid=uid if uid is not None else len(fakes.dal.messages) + 1, **values)
    fakes.dal.store_new_messages([(message, location_of(message))])
    return message


def location_of(message: Message) -> Location:
    return Location(
        message.tenant_id,
        message.user_id,
        message.server_folder,
        int(message.uidvalidity or 0),
        int(message.uid or 0),
        message.id,
        message.internal_date,
        message.match_key,
        message.flags,
    )
