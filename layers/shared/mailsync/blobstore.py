"""Raw RFC 822 messages in S3, content-addressed under tenant and user.

A message's raw copy is found by its *locator* (what a message stores as ``s3_key``):
- ``raw/{tenant}/{user}/{sha[:2]}/{sha}.eml``: a standalone object holding that message only
  (single messages: the steady state, the relay, the API's compose, POP3; and messages over
  ``PACK_MEMBER_MAX_BYTES``);
- ``pack/{tenant}/{user}/{sha[:2]}/{sha}.pack#{offset}+{length}``: ``length`` bytes at ``offset`` of
  a pack object, the concatenated raws of several small messages of one batch (a first sync's
  batches), named by the pack's own SHA-256: a PutObject per message was most of the worker's
  CPU per message. Tenant and user ids cannot contain ``#`` (``identity.TENANT_ID_PATTERN``),
  so the first ``#`` ends the key.
Raw copies are never deleted. A download link never exposes a pack (the other messages in it
may be confidential): ``presigned_url`` first copies a packed message to its standalone key.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import ClientError

from mailsync.aws import client
from mailsync.config import get_settings
from mailsync.observability import with_log_keys

UPLOAD_WORKERS = 8
# Packed: messages of at most this size (larger ones are standalone, never copied into a pack),
# into packs of at most PACK_MAX_BYTES (the memory a pack adds: one join of small raws).
PACK_MEMBER_MAX_BYTES = 256 * 1024
PACK_MAX_BYTES = 8 * 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class RawUnreadable(Exception):
    """A message's raw copy cannot be read as stored: gone, or other bytes."""


class RawMismatch(RawUnreadable):
    """The bytes read for a message are not the ones stored for it (SHA-256 or length differ)."""


class RawMissing(RawUnreadable):
    """The object a message's locator points into does not exist."""


def raw_key(tenant_id: str, user_id: str, sha256: str) -> str:
    # Message items written since 2026-12 leave out an ``s3_key`` equal to this (dal._items._derived
    # gives it back from tenant, user and content hash): the format must never change.
    # Same bytes, same key: a rerun after a crash overwrites instead of piling up copies.
    return f"raw/{tenant_id}/{user_id}/{sha256[:2]}/{sha256}.eml"


def pack_key(tenant_id: str, user_id: str, sha256: str) -> str:
    # Named by the pack's content: a rerun of a batch after a crash overwrites the same pack.
    return f"pack/{tenant_id}/{user_id}/{sha256[:2]}/{sha256}.pack"


def _upload(key: str, body: bytes, digest: bytes, content_type: str) -> None:
    # The SHA-256 already computed goes along as the upload's checksum (S3 verifies it):
    # given the header, botocore neither hashes the body again nor wraps it in a checksum stream.
    client("s3").put_object(
        Bucket=get_settings().raw_mail_bucket,
        Key=key,
        Body=body,
        ContentType=content_type,
        ChecksumSHA256=base64.b64encode(digest).decode("ascii"),
    )


def put_raw(tenant_id: str, user_id: str, raw: bytes) -> tuple[str, str]:
    """Store one raw message as a standalone object; returns (locator, sha256)."""
    digest = hashlib.sha256(raw).digest()
    sha = digest.hex()
    key = raw_key(tenant_id, user_id, sha)
    _upload(key, raw, digest, "message/rfc822")
    return key, sha


def _pack(tenant_id: str, user_id: str, raws: list[bytes]) -> list[tuple[str, str]]:
    """Upload ``raws`` as one pack; returns (locator, sha256) of each, in order."""
    spans: dict[str, tuple[int, int]] = {}  # sha -> (offset, length): one copy per content
    parts: list[bytes] = []
    shas: list[str] = []
    at = 0
    for raw in raws:
        sha = hashlib.sha256(raw).hexdigest()
        shas.append(sha)
        if sha not in spans:
            spans[sha] = (at, len(raw))
            parts.append(raw)
            at += len(raw)
    body = b"".join(parts)
    digest = hashlib.sha256(body).digest()
    key = pack_key(tenant_id, user_id, digest.hex())
    _upload(key, body, digest, "application/octet-stream")
    return [(f"{key}#{spans[sha][0]}+{spans[sha][1]}", sha) for sha in shas]


def _objects(raws: list[bytes]) -> list[list[int]]:
    """Indexes of ``raws`` grouped by the object they go to: a pack's members, or one message
    standing alone (too large, empty, or left alone at the end)."""
    groups: list[list[int]] = []
    members: list[int] = []
    size = 0
    for index, raw in enumerate(raws):
        if not 0 < len(raw) <= PACK_MEMBER_MAX_BYTES:
            groups.append([index])
            continue
        if members and size + len(raw) > PACK_MAX_BYTES:
            groups.append(members)
            members, size = [], 0
        members.append(index)
        size += len(raw)
    if members:
        groups.append(members)
    return groups


def put_many(tenant_id: str, user_id: str, raws: Iterable[bytes]) -> list[tuple[str, str]]:
    """Store a batch of raw messages; returns (locator, sha256) per message, in input order.

    Messages up to ``PACK_MEMBER_MAX_BYTES`` go into packs of up to ``PACK_MAX_BYTES``, larger ones
    (and a single message) stand alone; the uploads run in parallel in a bounded pool. Locators
    are returned only once their objects are uploaded.
    """
    items = list(raws)
    groups = _objects(items)

    def store(group: list[int]) -> list[tuple[str, str]]:
        if len(group) == 1:
            return [put_raw(tenant_id, user_id, items[group[0]])]
        return _pack(tenant_id, user_id, [items[i] for i in group])

    if len(groups) <= 1:
        stored = [store(group) for group in groups]
    else:
        client("s3")  # made once here: threads that all miss the cache at once would each build one
        with ThreadPoolExecutor(max_workers=min(UPLOAD_WORKERS, len(groups))) as pool:
            stored = list(pool.map(with_log_keys(store), groups))
    results: list[tuple[str, str]] = [("", "")] * len(items)
    for group, out in zip(groups, stored, strict=True):
        for index, value in zip(group, out, strict=True):
            results[index] = value
    return results


def _parse(locator: str) -> tuple[str, tuple[int, int] | None]:
    """(object key, (offset, length) of a packed message or None for a standalone object)."""
    key, sep, span = locator.partition("#")
    if not sep:
        if key.startswith("pack/"):  # a pack holds other messages: never one message's object
            raise ValueError(f"a pack without a byte range is not a message's locator: {locator!r}")
        return key, None
    offset, plus, length = span.partition("+")
    if not (plus and offset.isdigit() and length.isdigit() and int(length) > 0):
        raise ValueError(f"not a raw message locator: {locator!r}")
    return key, (int(offset), int(length))


def object_key(locator: str) -> str:
    """The S3 object a locator points into (the message's own object, or its pack)."""
    return _parse(locator)[0]


def _read(key: str, span: tuple[int, int] | None, sha256: str | None) -> bytes:
    params = {"Bucket": get_settings().raw_mail_bucket, "Key": key}
    if span is not None:
        offset, length = span
        params["Range"] = f"bytes={offset}-{offset + length - 1}"
    try:
        raw: bytes = client("s3").get_object(**params)["Body"].read()
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
            raise RawMissing(f"{key}: no such object") from exc
        raise
    if span is not None and len(raw) != span[1]:
        raise RawMismatch(f"{key}: {len(raw)} bytes at {span[0]}, {span[1]} expected")
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        where = key if span is None else f"{key} at {span[0]}+{span[1]}"
        raise RawMismatch(f"{where}: the bytes read do not have SHA-256 {sha256}")
    return raw


def get_raw(locator: str, sha256: str | None = None) -> bytes:
    """A message's raw bytes; with ``sha256`` (its ``content_hash``), verified: raises
    ``RawMismatch`` rather than return other bytes."""
    key, span = _parse(locator)
    return _read(key, span, sha256)


def _standalone(key: str, span: tuple[int, int], sha256: str) -> str:
    """The standalone copy of a packed message (made once, verified); returns its key."""
    _, tenant_id, user_id, *_ = key.split("/")
    target = raw_key(tenant_id, user_id, sha256)
    s3, bucket = client("s3"), get_settings().raw_mail_bucket
    try:
        s3.head_object(Bucket=bucket, Key=target)
        return target
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) not in _NOT_FOUND:
            raise
    raw = _read(key, span, sha256)
    _upload(target, raw, bytes.fromhex(sha256), "message/rfc822")
    return target


def presigned_url(
    locator: str, expires_seconds: int = 300, filename: str = "message.eml", sha256: str | None = None
) -> str:
    """A short-lived download URL of one message's raw copy (with AWS_ENDPOINT_URL set, it points
    at the local moto server). A packed message needs its ``sha256`` (``content_hash``): the link
    is to a verified standalone copy, never to the pack."""
    key, span = _parse(locator)
    if span is not None:
        if sha256 is None:
            raise ValueError("a packed message's link needs its SHA-256")
        key = _standalone(key, span, sha256)
    if not key.startswith("raw/"):  # only a standalone copy holds one message and nothing else
        raise ValueError(f"no download link for {key!r}: not a standalone raw copy")
    return client("s3").generate_presigned_url(
        "get_object",
        Params={
            "Bucket": get_settings().raw_mail_bucket,
            "Key": key,
            "ResponseContentType": "message/rfc822",
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
        },
        ExpiresIn=expires_seconds,
    )
