"""Claims to principal, whom a caller may act on, and the SSRF guard."""

from __future__ import annotations

import pytest

from mailsync.config import Settings
from mailsync.errors import ConnectFailed, Forbidden, NotFound, Unauthorized, ValidationFailed
from mailsync.identity import Principal, principal_from_claims, resolve_target_user
from mailsync.netguard import check_host_literal, is_public_address, resolve_checked

SETTINGS = Settings()


def test_claims_make_a_principal() -> None:
    p = principal_from_claims({"sub": "alice", "tenant_id": "acme", "role": "admin"}, SETTINGS)
    assert p == Principal("alice", "acme", True)


def test_configurable_claim_names_and_group_lists() -> None:
    settings = Settings(claim_tenant="custom:tenant_id", claim_role="cognito:groups")
    claims = {"sub": "bob", "custom:tenant_id": "acme", "cognito:groups": "[staff admin]"}
    assert principal_from_claims(claims, settings) == Principal("bob", "acme", True)


@pytest.mark.parametrize("claims", [{}, {"sub": "alice"}, {"tenant_id": "acme"}, {"sub": "a b", "tenant_id": "x"}])
def test_incomplete_claims_are_unauthorized(claims: dict) -> None:
    with pytest.raises(Unauthorized):
        principal_from_claims(claims, SETTINGS)


def exists(known: set[tuple[str, str]]):
    return lambda tenant, user: (tenant, user) in known


def test_users_act_on_themselves() -> None:
    alice = Principal("alice", "acme", False)
    assert resolve_target_user(alice, "me", exists(set())) == "alice"
    assert resolve_target_user(alice, "alice", exists(set())) == "alice"


def test_colleague_is_forbidden_other_tenant_not_found() -> None:
    alice = Principal("alice", "acme", False)
    with pytest.raises(Forbidden):
        resolve_target_user(alice, "bob", exists({("acme", "bob")}))
    with pytest.raises(NotFound):
        resolve_target_user(alice, "eve", exists({("globex", "eve")}))


def test_admin_acts_on_tenant_users_only() -> None:
    admin = Principal("root", "acme", True)
    assert resolve_target_user(admin, "bob", exists({("acme", "bob")})) == "bob"


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("2001:4860:4860::8888", True),
        ("0.0.0.0", False),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_literal_private_host_refused_unless_allowed() -> None:
    with pytest.raises(ValidationFailed) as err:
        check_host_literal("169.254.169.254", allow_private=False)
    assert err.value.field == "host"
    with pytest.raises(ValidationFailed):
        check_host_literal("localhost", allow_private=False)
    check_host_literal("127.0.0.1", allow_private=True)
    check_host_literal("imap.example.com", allow_private=False)


def test_resolved_loopback_refused_at_connect_time() -> None:
    with pytest.raises(ConnectFailed, match="non-public"):
        resolve_checked("localhost", 993, allow_private=False)
    assert "127.0.0.1" in resolve_checked("127.0.0.1", 993, allow_private=True)
