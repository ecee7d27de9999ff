"""GET /v1/users: an admin's picker of the tenant's users with mail settings. Only the caller's
tenant, admins only, pages by an opaque cursor that cannot be forged into another listing."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import ApiCall, Caller

ADMIN = Caller("root", "acme", "admin")
ALICE = Caller("alice", "acme", "user")
OTHER_ADMIN = Caller("boss", "globex", "admin")
PASSWORD = "pw-secret-123456"


def save_settings(api: ApiCall, admin: Caller, user_id: str, protocol: str = "imap") -> None:
    body = {
        "host": "mail.example.com",
        "username": f"{user_id}@example.com",
        "password": PASSWORD,
        "protocol": protocol,
    }
    response = api("PUT", f"/v1/users/{user_id}/mail-settings", body, caller=admin)
    assert response.status == 201, response.body


def cursor_of(key: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def test_an_admin_lists_the_users_of_their_own_tenant_only(api: ApiCall) -> None:
    save_settings(api, ADMIN, "carol", protocol="pop3")
    save_settings(api, ADMIN, "alice")
    save_settings(api, OTHER_ADMIN, "mallory")
    # The tenant's own items (privacy settings, office hours) live in the same partition.
    tenant = {"confidential_keywords": ["x"], "confidential_contacts": [], "office_hours": {"time_zone": "UTC"}}
    assert api("PUT", "/v1/tenant/settings", tenant, caller=ADMIN).status == 200

    response = api("GET", "/v1/users", caller=ADMIN)

    assert response.status == 200, response.body
    assert response.body == {
        "users": [
            {"user_id": "alice", "username": "alice@example.com", "protocol": "imap", "status": "pending"},
            {"user_id": "carol", "username": "carol@example.com", "protocol": "pop3", "status": "pending"},
        ],
        "next_cursor": None,
    }
    assert PASSWORD not in response.raw and "ciphertext" not in response.raw
    others = api("GET", "/v1/users", caller=OTHER_ADMIN).body["users"]
    assert [u["user_id"] for u in others] == ["mallory"]


def test_a_user_without_the_admin_role_gets_403(api: ApiCall) -> None:
    save_settings(api, ADMIN, "alice")
    response = api("GET", "/v1/users", caller=ALICE)
    assert response.status == 403
    assert response.body["error"]["code"] == "forbidden"


def test_pages_follow_the_cursor_to_the_end(api: ApiCall) -> None:
    wanted = [f"user{n:02d}" for n in range(7)]
    for user_id in reversed(wanted):
        save_settings(api, ADMIN, user_id)
    save_settings(api, OTHER_ADMIN, "user03x")

    seen: list[str] = []
    cursor = None
    for _ in range(10):  # a budget: 7 users in pages of 3 need at most 4 pages
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = api("GET", "/v1/users", caller=ADMIN, query=query)
        assert page.status == 200, page.body
        assert len(page.body["users"]) <= 3
        seen += [u["user_id"] for u in page.body["users"]]
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert seen == wanted


def test_another_tenants_cursor_is_refused_on_cursor(api: ApiCall) -> None:
    for user_id in ("a1", "a2"):
        save_settings(api, OTHER_ADMIN, user_id)
    theirs = api("GET", "/v1/users", caller=OTHER_ADMIN, query="limit=1").body["next_cursor"]
    assert theirs

    response = api("GET", "/v1/users", caller=ADMIN, query=f"cursor={theirs}")

    assert (response.status, response.body["error"]["field"]) == (422, "cursor")


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor!",
        cursor_of({"tenant_id": {"S": "globex"}, "user_id": {"S": "a1"}}),
        cursor_of({"tenant_id": {"S": "acme"}, "user_id": {"S": "#tenant"}}),
        cursor_of({"tenant_id": {"S": "acme"}, "user_id": {"N": "1"}}),
        cursor_of({"tenant_id": {"S": "acme"}, "user_id": {"S": "a"}, "host": {"S": "x"}}),
        cursor_of({"pk": {"S": "acme"}, "sk": {"S": "a"}}),
        cursor_of(["acme"]),
        "x" * 3000,
    ],
    ids=["garbage", "other-tenant", "tenant-item", "number", "extra-key", "other-listing", "list", "too-long"],
)
def test_a_forged_cursor_is_422_on_cursor(api: ApiCall, cursor: str) -> None:
    save_settings(api, ADMIN, "alice")
    response = api("GET", "/v1/users", caller=ADMIN, query=f"cursor={cursor}")
    assert response.status == 422, response.body
    assert response.body["error"]["field"] == "cursor"


@pytest.mark.parametrize("limit", ["0", "201", "ten", "1e3", "-1", "99999999999999999999999"])
def test_a_bad_limit_is_422_on_limit(api: ApiCall, limit: str) -> None:
    response = api("GET", "/v1/users", caller=ADMIN, query=f"limit={limit}")
    assert response.status == 422, response.body
    assert response.body["error"]["field"] == "limit"


def test_a_tenant_without_settings_lists_no_users(api: ApiCall) -> None:
    assert api("GET", "/v1/users", caller=ADMIN).body == {"users": [], "next_cursor": None}
