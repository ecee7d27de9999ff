"""template.yaml -> local stack: provision into moto and check the result from the AWS side."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.server import ThreadedMotoServer

from devstack.provision import (
    BUCKET,
    DEFAULT_TEMPLATE,
    ProvisionError,
    load_template,
    physical_name,
    provision,
    provision_mock,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
REGION = "eu-west-1"
PREFIX = "mailsync-local"

# The contract every function relies on (see the project brief).
EXPECTED_ENV = {
    "ACCOUNTS_TABLE",
    "MESSAGES_TABLE",
    "IDEMPOTENCY_TABLE",
    "RAW_MAIL_BUCKET",
    "SYNC_QUEUE_URL",
    "EVENT_BUS_NAME",
    "CREDENTIALS_KEY_ID",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
    "MAILSYNC_ALLOW_PRIVATE_HOSTS",
    "MAILSYNC_ALLOW_INSECURE",
    "MAILSYNC_CLAIM_USER",
    "MAILSYNC_CLAIM_TENANT",
    "MAILSYNC_CLAIM_ROLE",
    "MAILSYNC_IMAP_TIMEOUT_SECONDS",
    "MAILSYNC_HOST_CONCURRENCY",
}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "testing")


@pytest.fixture
def template() -> dict[str, Any]:
    return load_template(TEMPLATE_PATH)


@pytest.fixture
def mocked_env(aws_env: None) -> Iterator[dict[str, str]]:
    with mock_aws():
        yield provision_mock(TEMPLATE_PATH)


def _resources(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == resource_type}


def _keys(schema: list[dict[str, str]]) -> dict[str, str]:
    return {k["KeyType"]: k["AttributeName"] for k in schema}


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


def test_template_globals_declare_the_env_contract(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert set(variables) == EXPECTED_ENV


# --------------------------------------------------------------------------- mock_aws


def test_env_is_fully_resolved(mocked_env: dict[str, str], template: dict[str, Any]) -> None:
    env = mocked_env
    assert set(env) == set(template["Globals"]["Function"]["Environment"]["Variables"])
    for name, value in env.items():
        assert isinstance(value, str) and value, name
        assert "Ref" not in value and "Fn::" not in value and "{" not in value, (name, value)

    assert env["ACCOUNTS_TABLE"] == f"{PREFIX}-AccountsTable"
    assert env["MESSAGES_TABLE"] == f"{PREFIX}-MessagesTable"
    assert env["IDEMPOTENCY_TABLE"] == f"{PREFIX}-IdempotencyTable"
    assert env["RAW_MAIL_BUCKET"] == physical_name(PREFIX, "RawMailBucket", BUCKET) == "mailsync-local-rawmailbucket"
    assert env["EVENT_BUS_NAME"] == f"{PREFIX}-MailEventBus"
    assert env["SYNC_QUEUE_URL"].endswith(f"/{PREFIX}-SyncQueue")
    assert env["CREDENTIALS_KEY_ID"].startswith(f"arn:aws:kms:{REGION}:")
    assert env["POWERTOOLS_SERVICE_NAME"] == "mailsync"
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "Mailsync"
    assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"
    assert env["MAILSYNC_ALLOW_PRIVATE_HOSTS"] == "false"
    assert env["MAILSYNC_ALLOW_INSECURE"] == "false"
    assert env["MAILSYNC_CLAIM_USER"] == "sub"
    assert env["MAILSYNC_CLAIM_TENANT"] == "tenant_id"
    assert env["MAILSYNC_CLAIM_ROLE"] == "role"
    assert env["MAILSYNC_IMAP_TIMEOUT_SECONDS"] == "20"
    assert env["MAILSYNC_HOST_CONCURRENCY"] == "5"


def test_tables_match_the_template(mocked_env: dict[str, str], template: dict[str, Any]) -> None:
    ddb = boto3.client("dynamodb")
    tables = _resources(template, "AWS::DynamoDB::Table")
    assert set(tables) == {"AccountsTable", "MessagesTable", "IdempotencyTable"}
    for logical_id, resource in tables.items():
        props = resource["Properties"]
        table = ddb.describe_table(TableName=f"{PREFIX}-{logical_id}")["Table"]
        assert _keys(table["KeySchema"]) == _keys(props["KeySchema"]), logical_id
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        wanted_gsis = {g["IndexName"]: g for g in props.get("GlobalSecondaryIndexes", [])}
        have_gsis = {g["IndexName"]: g for g in table.get("GlobalSecondaryIndexes", [])}
        assert set(have_gsis) == set(wanted_gsis), logical_id
        for name, gsi in wanted_gsis.items():
            assert _keys(have_gsis[name]["KeySchema"]) == _keys(gsi["KeySchema"])
            assert have_gsis[name]["Projection"]["ProjectionType"] == gsi["Projection"]["ProjectionType"]
        backups = ddb.describe_continuous_backups(TableName=table["TableName"])["ContinuousBackupsDescription"]
        assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"


def test_table_contract(mocked_env: dict[str, str]) -> None:
    ddb = boto3.client("dynamodb")
    accounts = ddb.describe_table(TableName=mocked_env["ACCOUNTS_TABLE"])["Table"]
    assert _keys(accounts["KeySchema"]) == {"HASH": "tenant_id", "RANGE": "user_id"}
    (due,) = accounts["GlobalSecondaryIndexes"]
    assert due["IndexName"] == "due-index"
    assert _keys(due["KeySchema"]) == {"HASH": "due_shard", "RANGE": "next_sync_at"}
    types = {a["AttributeName"]: a["AttributeType"] for a in accounts["AttributeDefinitions"]}
    assert types["due_shard"] == "N" and types["next_sync_at"] == "N"

    messages = ddb.describe_table(TableName=mocked_env["MESSAGES_TABLE"])["Table"]
    assert _keys(messages["KeySchema"]) == {"HASH": "pk", "RANGE": "sk"}
    gsis = {g["IndexName"]: g for g in messages["GlobalSecondaryIndexes"]}
    assert _keys(gsis["gsi1"]["KeySchema"]) == {"HASH": "gsi1pk", "RANGE": "gsi1sk"}
    assert _keys(gsis["gsi2"]["KeySchema"]) == {"HASH": "gsi2pk", "RANGE": "gsi2sk"}
    assert {g["Projection"]["ProjectionType"] for g in gsis.values()} == {"ALL"}

    idempotency = mocked_env["IDEMPOTENCY_TABLE"]
    assert _keys(ddb.describe_table(TableName=idempotency)["Table"]["KeySchema"]) == {"HASH": "id"}
    ttl = ddb.describe_time_to_live(TableName=idempotency)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expiration"}

    # The sparse due-index answers the scheduler's query.
    ddb.put_item(
        TableName=mocked_env["ACCOUNTS_TABLE"],
        Item={"tenant_id": {"S": "t1"}, "user_id": {"S": "u1"}, "due_shard": {"N": "3"}, "next_sync_at": {"N": "100"}},
    )
    ddb.put_item(TableName=mocked_env["ACCOUNTS_TABLE"], Item={"tenant_id": {"S": "t1"}, "user_id": {"S": "u2"}})
    due_items = ddb.query(
        TableName=mocked_env["ACCOUNTS_TABLE"],
        IndexName="due-index",
        KeyConditionExpression="due_shard = :s AND next_sync_at <= :now",
        ExpressionAttributeValues={":s": {"N": "3"}, ":now": {"N": "200"}},
    )["Items"]
    assert [i["user_id"]["S"] for i in due_items] == ["u1"]


def test_queue_redrives_to_the_dead_letter_queue(mocked_env: dict[str, str]) -> None:
    sqs = boto3.client("sqs")
    dlq_url = sqs.get_queue_url(QueueName=f"{PREFIX}-SyncDeadLetterQueue")["QueueUrl"]
    dlq = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
    queue = sqs.get_queue_attributes(QueueUrl=mocked_env["SYNC_QUEUE_URL"], AttributeNames=["All"])["Attributes"]

    redrive = json.loads(queue["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == 5
    worker_timeout = load_template(TEMPLATE_PATH)["Resources"]["SyncWorkerFunction"]["Properties"]["Timeout"]
    assert int(queue["VisibilityTimeout"]) >= int(worker_timeout) * 6
    assert int(dlq["MessageRetentionPeriod"]) == 14 * 24 * 3600

    sqs.send_message(QueueUrl=mocked_env["SYNC_QUEUE_URL"], MessageBody='{"tenant_id":"t1"}')
    (message,) = sqs.receive_message(QueueUrl=mocked_env["SYNC_QUEUE_URL"])["Messages"]
    assert json.loads(message["Body"]) == {"tenant_id": "t1"}


def test_bucket_is_private_and_kms_encrypted(mocked_env: dict[str, str]) -> None:
    s3 = boto3.client("s3")
    bucket = mocked_env["RAW_MAIL_BUCKET"]
    s3.head_bucket(Bucket=bucket)
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    by_default = rule["ApplyServerSideEncryptionByDefault"]
    assert by_default["SSEAlgorithm"] == "aws:kms"
    raw_mail_key = boto3.client("kms").describe_key(KeyId=f"alias/{PREFIX}/raw-mail")["KeyMetadata"]["Arn"]
    assert by_default["KMSMasterKeyID"] == raw_mail_key
    ownership = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert ownership == [{"ObjectOwnership": "BucketOwnerEnforced"}]

    s3.put_object(Bucket=bucket, Key="t1/u1/raw.eml", Body=b"Subject: hi\r\n\r\nbody")
    assert s3.get_object(Bucket=bucket, Key="t1/u1/raw.eml")["Body"].read().startswith(b"Subject: hi")


def test_credentials_key_encrypts_with_context(mocked_env: dict[str, str]) -> None:
    kms = boto3.client("kms")
    key = mocked_env["CREDENTIALS_KEY_ID"]
    context = {"tenant_id": "t1", "user_id": "u1"}
    blob = kms.encrypt(KeyId=key, Plaintext=b"app-password", EncryptionContext=context)["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)["Plaintext"] == b"app-password"
    with pytest.raises(ClientError):
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"tenant_id": "t2", "user_id": "u1"})

    metadata = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert metadata["Arn"] == key and metadata["KeyState"] == "Enabled"
    assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is True
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases(KeyId=metadata["KeyId"])["Aliases"]}
    assert aliases.get(f"alias/{PREFIX}/credentials") == metadata["KeyId"]


def test_event_bus_exists(mocked_env: dict[str, str]) -> None:
    events = boto3.client("events")
    bus = events.describe_event_bus(Name=mocked_env["EVENT_BUS_NAME"])
    assert bus["Name"] == mocked_env["EVENT_BUS_NAME"]
    result = events.put_events(
        Entries=[
            {
                "EventBusName": mocked_env["EVENT_BUS_NAME"],
                "Source": "mailsync",
                "DetailType": "MessageReceived",
                "Detail": "{}",
            }
        ]
    )
    assert result["FailedEntryCount"] == 0


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
