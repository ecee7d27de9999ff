"""The committed docs/openapi.json is what the API serves (run `make openapi` after changing routes)."""

from __future__ import annotations

import json
from pathlib import Path

from devstack.openapi import openapi_document

ROOT = Path(__file__).resolve().parents[2]


def test_committed_openapi_matches_the_code() -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8"))
    assert committed == openapi_document(), "docs/openapi.json is stale: run `make openapi`"


def test_openapi_documents_every_route_and_the_error_shape() -> None:
    doc = openapi_document()
    assert set(doc["paths"]) >= {
        "/v1/users/{user_id}/mail-settings",
        "/v1/users/{user_id}/mail-settings/test",
        "/v1/users/{user_id}/server-folders",
        "/v1/users/{user_id}/folder-map",
    }
    put = doc["paths"]["/v1/users/{user_id}/mail-settings"]["put"]
    assert put["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    settings_in = doc["components"]["schemas"]["MailSettingsIn"]["properties"]
    assert settings_in["password"]["anyOf"][0].get("writeOnly") or settings_in["password"].get("writeOnly")
    assert "password" not in doc["components"]["schemas"]["MailSettingsOut"]["properties"]
