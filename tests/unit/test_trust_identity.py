"""Issue 9 (trust), the pure parts: role and id claims, header and JSON-depth bounds, mailbox identity."""

from __future__ import annotations

import json

import pytest

from mailsync.api_errors import MAX_JSON_DEPTH, json_depth
from mailsync.config import Settings
from mailsync.errors import Unauthorized
from mailsync.identity import has_role, is_list_claim, principal_from_claims
from mailsync.services.accounts import mailbox_identity
from mailsync.services.messages import MAX_HEADER_BYTES, header_size_error

SETTINGS = Settings()
GROUPS = Settings(claim_role="cognito:groups")


@pytest.mark.parametrize("role", ["user admin", "sales,admin", "admin assistant", "[admin]", "Admin", " admin", ""])
def test_role_strings_that_merely_contain_admin_are_not_admin(role: str) -> None:
    principal = principal_from_claims({"sub": "eve", "tenant_id": "acme", "role": role}, SETTINGS)
    assert principal.is_admin is False


def test_role_claim_matches_exactly_or_as_a_list() -> None:
    assert principal_from_claims({"sub": "a", "tenant_id": "t", "role": "admin"}, SETTINGS).is_admin
    # A real JSON array (the local stack passes decoded claims) containing the role.
    assert principal_from_claims({"sub": "a", "tenant_id": "t", "role": ["staff", "admin"]}, SETTINGS).is_admin
    assert not principal_from_claims({"sub": "a", "tenant_id": "t", "role": ["staff admin"]}, SETTINGS).is_admin
    assert not principal_from_claims({"sub": "a", "tenant_id": "t", "role": {"admin": True}}, SETTINGS).is_admin


@pytest.mark.parametrize(
    ("rendered", "admin"),
    [
        ("[admin]", True),
        ("[staff admin]", True),
        ("[sales,admin]", False),  # one group called "sales,admin"
        ("[administrators]", False),
        ("staff admin", False),  # not API Gateway's rendering of an array
        ("admin", True),
    ],
)
def test_api_gateway_rendering_of_a_groups_claim(rendered: str, admin: bool) -> None:
    claims = {"sub": "bob", "tenant_id": "acme", "cognito:groups": rendered}
    assert principal_from_claims(claims, GROUPS).is_admin is admin


def test_which_claims_are_lists() -> None:
    assert is_list_claim("cognito:groups") and is_list_claim("groups") and is_list_claim("https://x.example/roles")
    assert not is_list_claim("role") and not is_list_claim("custom:role")
    assert has_role("[admin]", "groups", "admin") and not has_role("[admin]", "role", "admin")


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice", "tenant_id": "a" * 3000},
        {"sub": "alice", "tenant_id": "acme#bob"},  # "#" separates key parts
        {"sub": "alice", "tenant_id": "acme\n"},
        {"sub": "alice\n", "tenant_id": "acme"},
        {"sub": "alice", "tenant_id": "ac me"},
        {"sub": "alice", "tenant_id": ["acme"]},
        {"sub": "a" * 129, "tenant_id": "acme"},
    ],
)
def test_malformed_ids_in_claims_are_unauthorized(claims: dict) -> None:
    with pytest.raises(Unauthorized):
        principal_from_claims(claims, SETTINGS)


def test_header_size_limits() -> None:
    references = " ".join(f"<{i:04d}.{'x' * 4500}@example.com>" for i in range(100))
    huge = f"Subject: hi\r\nReferences: {references}\r\n\r\nbody".encode()
    assert header_size_error(huge) == f"The References header is larger than {MAX_HEADER_BYTES // 1024} KB"
    folded = b"Subject: hi\r\nReferences: <a@b>\r\n" + b"\t<x@y>\r\n" * 9000 + b"\r\nbody"
    assert "References" in (header_size_error(folded) or ""), "continuation lines count for their header"
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(300)) + b"\r\nbody"
    assert "headers are larger" in (header_size_error(many) or "")
    assert header_size_error(b"Subject: ok\r\n\r\n" + b"A" * 2_000_000) is None, "the body does not count"
    assert header_size_error(b"Subject: lf only\n\n" + b"B" * 100) is None


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b"[" * 100_000 + b"]" * 100_000) > MAX_JSON_DEPTH
    assert json_depth(json.dumps({"a": "[" * 10_000 + "{" * 10_000}).encode()) <= MAX_JSON_DEPTH
    assert json_depth(json.dumps({"a": 'x\\"[[[' * 100}).encode()) <= MAX_JSON_DEPTH
    assert json_depth(json.dumps([[1]] * 1000).encode()) == 2


def test_mailbox_identity_is_protocol_host_and_user() -> None:
    base = {"protocol": "imap", "host": "imap.example.com", "username": "alice", "port": 993, "security": "ssl"}
    assert mailbox_identity(base) == mailbox_identity(base | {"port": 143, "security": "starttls"})
    assert mailbox_identity(base) == mailbox_identity(base | {"host": "IMAP.example.com"})
    assert mailbox_identity(base) != mailbox_identity(base | {"host": "evil.example"})
    assert mailbox_identity(base) != mailbox_identity(base | {"username": "bob"})
    assert mailbox_identity(base) != mailbox_identity(base | {"protocol": "pop3"})
