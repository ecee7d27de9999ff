"""POP3 sync state: the UIDLs a sync has dealt with, per account and mail server (re-exported by
``mailsync.dal``).

One item per UIDL in the messages table, under ``A#{t}#{u}#P#{server}`` / ``{uidl}``, where
``server`` is a digest of the mail host and user name: UIDLs mean something on one server only,
so another server (changed settings) starts from an empty state instead of taking its "1" for
the old server's "1". A sync reads the whole partition once (a Query), and writes what it
learned in batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pynamodb.attributes import BooleanAttribute, NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute

from mailsync.dal import _keys as keys
from mailsync.dal._items import BATCH_WRITE_ITEMS
from mailsync.dal._models import _Item
from mailsync.domain import PopSeen


class PopUidlModel(_Item):
    """A POP3 message a sync has dealt with (``domain.PopSeen``); sk = its UIDL."""

    seen_at = UTCDateTimeAttribute()
    size = NumberAttribute(null=True)
    id = UnicodeAttribute(null=True)
    stored_at = UTCDateTimeAttribute(null=True)
    headers_only = BooleanAttribute(null=True)
    failures = NumberAttribute(null=True)
    header_digest = UnicodeAttribute(null=True)


def _pk(tenant_id: str, user_id: str, host: str, username: str) -> str:
    server = hashlib.sha256(f"{host.strip().lower()}\0{username}".encode()).hexdigest()[:24]
    return f"{keys.account_pk(tenant_id, user_id)}#P#{server}"


def pop_seen(tenant_id: str, user_id: str, host: str, username: str) -> dict[str, PopSeen]:
    """Every UIDL the account's syncs dealt with on this mail server, by UIDL."""
    out: dict[str, PopSeen] = {}
    for item in PopUidlModel.query(_pk(tenant_id, user_id, host, username), consistent_read=True):
        out[item.sk] = PopSeen(
            uidl=item.sk,
            seen_at=item.seen_at,
            size=None if item.size is None else int(item.size),
            id=item.id,
            stored_at=item.stored_at,
            headers_only=bool(item.headers_only),
            failures=int(item.failures or 0),
            header_digest=item.header_digest,
        )
    return out


def record_pop_seen(tenant_id: str, user_id: str, host: str, username: str, seen: Iterable[PopSeen]) -> None:
    """Remember ``seen`` (puts: recording the same UIDL again overwrites it)."""
    pk = _pk(tenant_id, user_id, host, username)
    items = [
        PopUidlModel(
            pk,
            s.uidl,
            seen_at=s.seen_at,
            size=s.size,
            id=s.id,
            stored_at=s.stored_at,
            headers_only=s.headers_only or None,
            failures=s.failures or None,
            header_digest=s.header_digest,
        )
        for s in seen
    ]
    for start in range(0, len(items), BATCH_WRITE_ITEMS):
        with PopUidlModel.batch_write() as batch:
            for item in items[start : start + BATCH_WRITE_ITEMS]:
                batch.save(item)


def forget_pop_seen(tenant_id: str, user_id: str, host: str, username: str, uidls: Iterable[str]) -> None:
    """Forget UIDLs that are no longer on the server (a later message may reuse one)."""
    pk = _pk(tenant_id, user_id, host, username)
    listed = list(uidls)
    for start in range(0, len(listed), BATCH_WRITE_ITEMS):
        with PopUidlModel.batch_write() as batch:
            for uidl in listed[start : start + BATCH_WRITE_ITEMS]:
                batch.delete(PopUidlModel(pk, uidl))
