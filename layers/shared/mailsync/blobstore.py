"""Raw RFC 822 messages in S3, content-addressed under tenant and user."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from mailsync.aws import client
from mailsync.config import get_settings

UPLOAD_WORKERS = 8


def raw_key(tenant_id: str, user_id: str, sha256: str) -> str:
    # Same bytes, same key: a rerun after a crash overwrites instead of piling up copies.
    return f"raw/{tenant_id}/{user_id}/{sha256[:2]}/{sha256}.eml"


def put_raw(tenant_id: str, user_id: str, raw: bytes) -> tuple[str, str]:
    """Store one raw message; returns (key, sha256)."""
    digest = hashlib.sha256(raw).digest()
    sha = digest.hex()
    key = raw_key(tenant_id, user_id, sha)
    # The SHA-256 the key is made of goes along as the upload's checksum (S3 verifies it):
    # given the header, botocore neither hashes the body again nor wraps it in a checksum stream.
    client("s3").put_object(
        Bucket=get_settings().raw_mail_bucket,
        Key=key,
        Body=raw,
        ContentType="message/rfc822",
        ChecksumSHA256=base64.b64encode(digest).decode("ascii"),
    )
    return key, sha


def put_many(tenant_id: str, user_id: str, raws: Iterable[bytes]) -> list[tuple[str, str]]:
    """Upload in parallel with a bounded pool; results in input order."""
    items = list(raws)
    if len(items) <= 1:
        return [put_raw(tenant_id, user_id, raw) for raw in items]
    client("s3")  # made once here: threads that all miss the cache at once would each build one
    with ThreadPoolExecutor(max_workers=min(UPLOAD_WORKERS, len(items))) as pool:
        return list(pool.map(lambda raw: put_raw(tenant_id, user_id, raw), items))


def get_raw(key: str) -> bytes:
    return client("s3").get_object(Bucket=get_settings().raw_mail_bucket, Key=key)["Body"].read()


def presigned_url(key: str, expires_seconds: int = 300, filename: str = "message.eml") -> str:
    """A short-lived download URL (with AWS_ENDPOINT_URL set, it points at the local moto server)."""
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
