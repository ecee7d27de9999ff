"""Request models and the error shape: bad input names the field and never echoes a secret."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from mailsync.api_errors import validation_error_response
from mailsync.schemas import MailSettingsIn, default_port


@pytest.mark.parametrize(
    ("protocol", "security", "port"),
    [("imap", "ssl", 993), ("imap", "starttls", 143), ("pop3", "ssl", 995), ("pop3", "starttls", 110)],
)
def test_default_ports(protocol: str, security: str, port: int) -> None:
    assert default_port(protocol, security) == port


def test_host_is_normalised() -> None:
    assert MailSettingsIn(host=" IMAP.Example.COM. ", username="u").host == "imap.example.com"
    assert MailSettingsIn(host="[::1]", username="u").host == "::1"


@pytest.mark.parametrize("host", ["bad host", "-x.com", "a..b", "x" * 64 + ".com", ""])
def test_bad_hosts_rejected(host: str) -> None:
    with pytest.raises(ValidationError):
        MailSettingsIn(host=host, username="u")


def test_validation_error_names_field_without_echoing_input() -> None:
    with pytest.raises(ValidationError) as err:
        MailSettingsIn.model_validate({"host": "h.example", "username": "u", "password": "", "sync_window_days": 400})
    errors = [{**e, "loc": ("body", *e["loc"])} for e in err.value.errors()]
    response = validation_error_response(errors)
    body = json.loads(response.body)
    assert response.status_code == 422
    assert body["error"]["code"] == "validation_error"
    assert body["error"]["field"] in {"password", "sync_window_days"}


def test_unknown_field_is_named() -> None:
    with pytest.raises(ValidationError) as err:
        MailSettingsIn.model_validate({"host": "h.example", "username": "u", "pasword": "hunter2"})
    errors = [{**e, "loc": ("body", *e["loc"])} for e in err.value.errors()]
    body = json.loads(validation_error_response(errors).body)
    assert body["error"]["field"] == "pasword"
    assert "hunter2" not in json.dumps(body)
