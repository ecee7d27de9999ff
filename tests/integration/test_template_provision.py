"""template.yaml's contract, checked from the AWS side after provisioning it into moto.

The provisioner's own tests (loader, idempotency, overrides, a moto server) are in devstack/tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from devstack.provision import (
    BUCKET,
    load_template,
    physical_name,
    provision_mock,
)
from devstack.tests.aws_env import use_fake_aws

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
REGION = "eu-west-1"
PREFIX = "mailsync-local"

# The contract every function relies on (see the project brief).
EXPECTED_ENV = {
    "AWS_ENDPOINT_URL",
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
    "MAILSYNC_WORKER_THREADS",
    "MAILSYNC_SYNC_GROUP_SIZE",
    "MAILSYNC_HOST_CONCURRENCY_OVERRIDES",
}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_aws(monkeypatch, REGION)


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


# --------------------------------------------------------------------------- template


def test_template_globals_declare_the_env_contract(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert set(variables) == EXPECTED_ENV


def test_the_templates_worker_defaults_are_the_settings_defaults(template: dict[str, Any]) -> None:
    # Deployed and local runs (and the throughput bench's model) size the worker alike.
    from mailsync.config import Settings

    fields = Settings.model_fields
    parameters = template["Parameters"]
    assert parameters["WorkerThreads"]["Default"] == fields["worker_threads"].default
    assert parameters["SyncGroupSize"]["Default"] == fields["sync_group_size"].default


# --------------------------------------------------------------------------- mock_aws


def test_env_is_fully_resolved(mocked_env: dict[str, str], template: dict[str, Any]) -> None:
    env = mocked_env
    assert set(env) == set(template["Globals"]["Function"]["Environment"]["Variables"])
    assert env.pop("AWS_ENDPOINT_URL") == "", "inside mock_aws the functions use the default endpoints"
    for name, value in env.items():
        # Overrides of the built-in per-host limits: none by default.
        assert isinstance(value, str) and (value or name == "MAILSYNC_HOST_CONCURRENCY_OVERRIDES"), name
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
    assert env["MAILSYNC_HOST_CONCURRENCY"] == "10"
    assert env["MAILSYNC_HOST_CONCURRENCY_OVERRIDES"] == ""


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
    # The listings' indexes carry only what their filters compare (the dal reads pages by key).
    from mailsync.dal._models import LISTING_FILTERS

    for gsi in gsis.values():
        assert gsi["Projection"]["ProjectionType"] == "INCLUDE"
        assert sorted(gsi["Projection"]["NonKeyAttributes"]) == sorted(LISTING_FILTERS)

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


def test_the_pollers_are_not_traced_unless_asked(template: dict[str, Any]) -> None:
    """The scheduler and the worker run for every account every minute: active X-Ray tracing
    there is a parameter (PollerTracing), off by default; the API stays traced."""
    parameter = template["Parameters"]["PollerTracing"]
    assert parameter["Default"] == "PassThrough" and set(parameter["AllowedValues"]) == {"PassThrough", "Active"}
    assert template["Conditions"]["PollerTraced"] == {"Fn::Equals": [{"Ref": "PollerTracing"}, "Active"]}
    assert template["Globals"]["Function"]["Tracing"] == "Active"
    resources = template["Resources"]
    for name in ("SchedulerFunction", "SyncWorkerFunction"):
        properties = resources[name]["Properties"]
        assert properties["Tracing"] == {"Ref": "PollerTracing"}, name
        assert properties["Environment"]["Variables"]["POWERTOOLS_TRACE_DISABLED"] == {
            "Fn::If": ["PollerTraced", "false", "true"]
        }, name
    assert "Tracing" not in resources["ApiFunction"]["Properties"]
