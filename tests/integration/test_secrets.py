"""The mail password appears in no log line, no response and no DynamoDB item."""

from __future__ import annotations

import base64
import logging

import boto3
import pytest

from tests.conftest import ApiCall


def test_password_never_leaks(
    api: ApiCall, local_mail_env, mail_user, aws, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from mailsync.observability import logger

    logger.setLevel("DEBUG")
    caplog.set_level(logging.DEBUG, logger="imapclient")
    caplog.set_level(logging.DEBUG, logger="mailsync")
    caplog.set_level(logging.INFO)
    secret = mail_user.password
    body = {
        "host": "127.0.0.1",
        "port": mail_user.imaps_port,
        "username": mail_user.username,
        "password": secret,
        "security": "ssl",
    }
    responses = [
        api("PUT", "/v1/users/me/mail-settings", body),
        api("GET", "/v1/users/me/mail-settings"),
        api("POST", "/v1/users/me/mail-settings/test"),
        api("POST", "/v1/users/me/mail-settings/test", {"password": secret}),
        api("GET", "/v1/users/me/server-folders"),
        api("GET", "/v1/users/me/folder-map"),
        api("PUT", "/v1/users/me/folder-map", {"inbox": "INBOX"}),
        # Failures are where secrets tend to slip into messages.
        api("PUT", "/v1/users/me/mail-settings", {**body, "port": "x"}),
        api("PUT", "/v1/users/me/mail-settings", {**body, "pasword": secret}),
        api("POST", "/v1/users/me/mail-settings/test", {"password": secret + "-wrong"}),
        api("PUT", "/v1/users/me/mail-settings", {**body, "password": secret + "-wrong"}),
        api("GET", "/v1/users/me/server-folders"),
    ]
    assert responses[0].status == 201 and responses[2].status == 200 and responses[-1].status == 502

    needles = [secret, base64.b64encode(secret.encode()).decode()]
    for response in responses:
        for needle in needles:
            assert needle not in response.raw, f"password in a response: {response.raw[:200]}"

    logger.setLevel("INFO")
    captured = capfd.readouterr()
    logs = captured.out + captured.err + "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "mail settings saved" in logs, "the logs were captured"
    for needle in needles:
        assert needle not in logs

    dynamodb = boto3.client("dynamodb")
    for table in dynamodb.list_tables()["TableNames"]:
        for item in dynamodb.scan(TableName=table)["Items"]:
            dump = repr(item)
            for needle in needles:
                assert needle not in dump
                assert needle.encode() not in dump.encode()
            if "password_ciphertext" in item:
                assert secret.encode() not in item["password_ciphertext"]["B"]
