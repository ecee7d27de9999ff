"""The local moto serialises every DynamoDB request, reads included.

moto keeps a table's items in plain dicts; a Query iterates over them while a write from another
thread (the local stack's worker, its API threads) inserts a partition, and moto raised
``RuntimeError: dictionary changed size during iteration``. Real DynamoDB never fails a read
because of a concurrent write."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devstack.moto_atomic import make_dynamodb_atomic

TABLE = "atomic-test"
PARTITIONS = 2_000  # a Query walks every partition of moto's table: a long loop to interrupt
READERS = 3
QUERIES_PER_READER = 15
MAX_WRITES = 20_000  # the writer stops when the readers are done, or here at the latest
JOIN_SECONDS = 120


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    make_dynamodb_atomic()
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="eu-west-1")
        dynamodb.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
                {"AttributeName": "shard", "AttributeType": "N"},
            ],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "shard-index",
                    "KeySchema": [{"AttributeName": "shard", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
        )
        resource_table = boto3.resource("dynamodb", region_name="eu-west-1").Table(TABLE)
        with resource_table.batch_writer() as batch:
            for i in range(PARTITIONS):
                batch.put_item(Item={"pk": f"p{i}", "sk": "s", "shard": i % 4})
        yield dynamodb


def test_queries_while_writes_happen_never_fail(table: Any) -> None:
    errors: list[BaseException] = []
    readers_done = threading.Event()
    writes = 0

    def read() -> None:
        try:
            for n in range(QUERIES_PER_READER):
                table.query(
                    TableName=TABLE,
                    IndexName="shard-index",
                    KeyConditionExpression="shard = :s",
                    ExpressionAttributeValues={":s": {"N": str(n % 4)}},
                    Limit=5,
                )
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def write() -> None:
        nonlocal writes
        try:
            while not readers_done.is_set() and writes < MAX_WRITES:
                # A new partition each time: moto inserts a key into the dict a Query walks.
                table.put_item(
                    TableName=TABLE,
                    Item={"pk": {"S": f"new{writes}"}, "sk": {"S": "s"}, "shard": {"N": str(writes % 4)}},
                )
                writes += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    previous = sys.getswitchinterval()
    # Switch threads often, so a write lands inside a Query's loop on every run, not by luck.
    sys.setswitchinterval(1e-6)
    try:
        writer = threading.Thread(target=write)
        readers = [threading.Thread(target=read) for _ in range(READERS)]
        writer.start()
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(JOIN_SECONDS)
        readers_done.set()
        writer.join(JOIN_SECONDS)
    finally:
        sys.setswitchinterval(previous)
    assert not writer.is_alive() and not any(r.is_alive() for r in readers)
    assert errors == []
    assert writes > 0
