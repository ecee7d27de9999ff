"""Bad requests get a 4xx naming the field; nothing is stored."""

from __future__ import annotations

import pytest

from tests.conftest import ApiCall, Caller

GOOD = {"host": "imap.example.com", "username": "alice@example.com", "password": "pw-123456"}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"host": None}, "host"),
        ({"host": "not a host"}, "host"),
        ({"username": ""}, "username"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": "imap"}, "port"),
        ({"security": "tls"}, "security"),
        ({"protocol": "smtp"}, "protocol"),
        ({"sync_window_days": 0}, "sync_window_days"),
        ({"sync_window_days": 366}, "sync_window_days"),
        ({"fetch_enabled": "maybe"}, "fetch_enabled"),
        ({"password": ""}, "password"),
        ({"pasword": "x"}, "pasword"),
        ({"host": "10.0.0.5"}, "host"),
        ({"host": "localhost"}, "host"),
    ],
)
def test_bad_settings_payloads(api: ApiCall, patch: dict, field: str) -> None:
    body = {**GOOD, **patch}
    body = {k: v for k, v in body.items() if v is not None}
    response = api("PUT", "/v1/users/me/mail-settings", body)
    assert response.status == 422, response.body
    assert response.body["error"]["code"] == "validation_error"
    assert response.body["error"]["field"] == field
    assert api("GET", "/v1/users/me/mail-settings").status == 404


def test_password_required_on_create(api: ApiCall) -> None:
    response = api("PUT", "/v1/users/me/mail-settings", {k: v for k, v in GOOD.items() if k != "password"})
    assert (response.status, response.body["error"]["field"]) == (422, "password")


def test_not_json(api: ApiCall) -> None:
    response = api("PUT", "/v1/users/me/mail-settings", "{not json")
    assert response.status == 422
    assert response.body["error"]["code"] == "validation_error"


def test_bad_user_id_in_path(api: ApiCall) -> None:
    response = api("GET", "/v1/users/a%20b/mail-settings", caller=Caller(role="admin"))
    assert response.status in (404, 422)
    assert "error" in response.body


def test_unknown_route_is_json_404(api: ApiCall) -> None:
    response = api("GET", "/v1/nothing-here")
    assert response.status == 404
    assert response.body["error"]["code"] == "not_found"


def test_missing_claims_is_401(api: ApiCall) -> None:
    response = api("GET", "/v1/users/me/mail-settings", caller=Caller(user="", tenant="acme"))
    assert response.status == 401
    assert response.body["error"]["code"] == "unauthorized"


def test_swagger_ui_and_spec(api: ApiCall) -> None:
    ui = api("GET", "/swagger")
    assert ui.status == 200
    assert "swagger" in ui.raw.lower()
    spec = api("GET", "/swagger", query="format=json")
    assert spec.status == 200
    assert "/v1/users/{user_id}/folder-map" in spec.body["paths"]


def test_security_none_default_refused(api: ApiCall) -> None:
    response = api("PUT", "/v1/users/me/mail-settings", {**GOOD, "security": "none"})
    assert (response.status, response.body["error"]["field"]) == (422, "security")
