"""What the tests check of raw storage, through ``mailsync.blobstore`` (not by object key shapes):
each message's raw copy reads back with its SHA-256, and the account's objects in the bucket are
exactly those its messages' locators point at (a rerun overwrites, never piles up)."""

from __future__ import annotations

from collections.abc import Iterable


def account_objects(tenant_id: str, user_id: str) -> set[str]:
    """The account's objects (standalone raws and packs) in the raw mail bucket."""
    from mailsync.aws import client
    from mailsync.config import get_settings

    keys: set[str] = set()
    for prefix in ("raw/", "pack/"):
        pages = client("s3").get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=get_settings().raw_mail_bucket, Prefix=f"{prefix}{tenant_id}/{user_id}/"):
            keys.update(o["Key"] for o in page.get("Contents", []))
    return keys


def checked_raw_copies(tenant_id: str, user_id: str, ids: Iterable[str]) -> set[str]:
    """Reads the raw copy of every message in ``ids`` (verified by its content hash), checks that
    no object of the account is left that none of them uses, and returns the objects used."""
    from mailsync import blobstore, dal

    ids = list(ids)
    messages = dal.find_messages(ids)
    assert sorted(messages) == sorted(ids), "a message is missing"
    used: set[str] = set()
    for message in messages.values():
        blobstore.get_raw(message.s3_key, sha256=message.content_hash)
        used.add(blobstore.object_key(message.s3_key))
        # A download link's standalone copy of a packed message is one of its copies too.
        used.add(blobstore.raw_key(tenant_id, user_id, message.content_hash))
    objects = account_objects(tenant_id, user_id)
    assert objects <= used, f"objects no message uses: {sorted(objects - used)}"
    return objects
