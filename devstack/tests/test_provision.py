"""devstack.provision: the template loader and the provisioner (template.yaml -> moto, in-process or a server).

What the provisioned resources must look like is template.yaml's contract, tested in
tests/integration/test_template_provision.py."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from devstack.provision import DEFAULT_TEMPLATE, ProvisionError, load_template, provision
from devstack.tests.aws_env import use_fake_aws

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
REGION = "eu-west-1"
PREFIX = "mailsync-local"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_aws(monkeypatch, REGION)


@pytest.fixture
def template() -> dict[str, Any]:
    return load_template(TEMPLATE_PATH)


# --------------------------------------------------------------------------- loader


def test_default_template_is_the_repo_template() -> None:
    assert DEFAULT_TEMPLATE == TEMPLATE_PATH


def test_short_form_tags_become_long_forms(template: dict[str, Any], tmp_path: Path) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["ACCOUNTS_TABLE"] == {"Ref": "AccountsTable"}
    assert variables["CREDENTIALS_KEY_ID"] == {"Fn::GetAtt": ["CredentialsKey", "Arn"]}

    sample = tmp_path / "t.yaml"
    sample.write_text(
        "AWSTemplateFormatVersion: 2010-09-09\n"
        "Conditions:\n"
        "  IsProd: !Equals [!Ref Env, prod]\n"
        "Resources:\n"
        "  X:\n"
        "    Type: AWS::SNS::Topic\n"
        "    Properties:\n"
        "      A: !Sub '${AWS::StackName}-x'\n"
        "      B: !If [IsProd, !GetAtt [Y, Arn], !Join ['-', [a, !Select [0, !Split [',', 'b,c']]]]]\n"
        "      C: !GetAtt Y.Outputs.Z\n"
        "      D: !Sub ['${a}', {a: !Ref Y}]\n",
        encoding="utf-8",
    )
    loaded = load_template(sample)
    assert loaded["AWSTemplateFormatVersion"] == "2010-09-09"
    assert loaded["Conditions"]["IsProd"] == {"Fn::Equals": [{"Ref": "Env"}, "prod"]}
    props = loaded["Resources"]["X"]["Properties"]
    assert props["A"] == {"Fn::Sub": "${AWS::StackName}-x"}
    assert props["B"] == {
        "Fn::If": [
            "IsProd",
            {"Fn::GetAtt": ["Y", "Arn"]},
            {"Fn::Join": ["-", ["a", {"Fn::Select": [0, {"Fn::Split": [",", "b,c"]}]}]]},
        ]
    }
    assert props["C"] == {"Fn::GetAtt": ["Y", "Outputs.Z"]}
    assert props["D"] == {"Fn::Sub": ["${a}", {"a": {"Ref": "Y"}}]}


# --------------------------------------------------------------------------- mock_aws


def test_provision_is_idempotent(aws_env: None, template: dict[str, Any]) -> None:
    with mock_aws():
        first = provision(template, endpoint_url=None)
        second = provision(template, endpoint_url=None)
        assert first == second
        assert sorted(boto3.client("dynamodb").list_tables()["TableNames"]) == sorted(
            f"{PREFIX}-{t}" for t in ("AccountsTable", "MessagesTable", "IdempotencyTable")
        )
        assert len(boto3.client("sqs").list_queues()["QueueUrls"]) == 2
        kms = boto3.client("kms")
        tagged = [
            tag["TagValue"]
            for key in kms.list_keys()["Keys"]  # moto also adds a key for aws/dynamodb (table SSE)
            for tag in kms.list_resource_tags(KeyId=key["KeyId"])["Tags"]
            if tag["TagKey"] == "mailsync:devstack-logical-id"
        ]
        assert sorted(tagged) == [f"{PREFIX}/CredentialsKey", f"{PREFIX}/RawMailKey"]
        assert len(boto3.client("s3").list_buckets()["Buckets"]) == 1


def test_parameter_overrides_and_prefix(aws_env: None, template: dict[str, Any]) -> None:
    with mock_aws():
        env = provision(
            template,
            endpoint_url=None,
            prefix="other",
            parameter_overrides={"LogLevel": "DEBUG", "AllowPrivateMailHosts": "true", "HostConcurrency": 2},
        )
        assert env["POWERTOOLS_LOG_LEVEL"] == "DEBUG"
        assert env["MAILSYNC_ALLOW_PRIVATE_HOSTS"] == "true"
        assert env["MAILSYNC_HOST_CONCURRENCY"] == "2"
        assert env["ACCOUNTS_TABLE"] == "other-AccountsTable"
        with pytest.raises(ProvisionError):
            provision(template, endpoint_url=None, parameter_overrides={"NoSuchParameter": "x"})


def test_existing_table_gets_missing_indexes(aws_env: None, template: dict[str, Any]) -> None:
    with mock_aws():
        provision(template, endpoint_url=None)
        changed = json.loads(json.dumps(template))
        props = changed["Resources"]["MessagesTable"]["Properties"]
        props["AttributeDefinitions"].append({"AttributeName": "gsi3pk", "AttributeType": "S"})
        props["GlobalSecondaryIndexes"].append(
            {
                "IndexName": "gsi3",
                "KeySchema": [{"AttributeName": "gsi3pk", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        )
        env = provision(changed, endpoint_url=None)
        table = boto3.client("dynamodb").describe_table(TableName=env["MESSAGES_TABLE"])["Table"]
        assert {g["IndexName"] for g in table["GlobalSecondaryIndexes"]} == {"gsi1", "gsi2", "gsi3"}


# --------------------------------------------------------------------------- moto server


def test_provision_through_a_moto_server(aws_env: None, template: dict[str, Any]) -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        assert port != 0
        env = provision(template, endpoint_url=endpoint, session=boto3.session.Session(region_name=REGION))
        assert provision(template, endpoint_url=endpoint) == env  # idempotent over HTTP too

        ddb = boto3.client("dynamodb", endpoint_url=endpoint)
        assert {env["ACCOUNTS_TABLE"], env["MESSAGES_TABLE"], env["IDEMPOTENCY_TABLE"]} <= set(
            ddb.list_tables()["TableNames"]
        )
        assert f":{port}/" in env["SYNC_QUEUE_URL"]
        sqs = boto3.client("sqs", endpoint_url=endpoint)
        sqs.send_message(QueueUrl=env["SYNC_QUEUE_URL"], MessageBody="ping")
        assert sqs.receive_message(QueueUrl=env["SYNC_QUEUE_URL"])["Messages"][0]["Body"] == "ping"
        boto3.client("s3", endpoint_url=endpoint).head_bucket(Bucket=env["RAW_MAIL_BUCKET"])
    finally:
        try:
            request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
            urllib.request.urlopen(request, timeout=10).close()
        finally:
            server.stop()
