"""Fault injection: connections cut mid-transfer, Lambda deadlines, AWS throttling and 5xx.

Every case ends with reruns that must converge: the CRM holds exactly the server's messages
(by Message-ID and subject, each once, each pointing at the server copy it came from), and S3
holds one raw object per message. Network faults come from a loopback TCP proxy between the
worker and Dovecot (tests/fixtures/tcp_proxy.py), AWS faults from botocore's HTTP layer, so
botocore's and PynamoDB's own retries see them as they would see real ones.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from devstack.dovecot import make_message
from mailsync.sync.planner import jobs as policy
from tests.fixtures.tcp_proxy import Cut, TcpProxy
from tests.integration.raw_copies import checked_raw_copies
from tests.integration.sync_support import Account, connect_account, days_ago

FOLDER_MAP = {"inbox": "INBOX", "sent": "Sent", "archive": "Archive"}
# Big enough that the body FETCH dwarfs everything else on the connection (see tcp_proxy).
BODY = "".join(f"line {i:05d} of a message body that is long enough to matter\n" for i in range(400))


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(policy, "RETRY_BASE_DELAY_SECONDS", 0)


@pytest.fixture
def proxy(mail_user) -> Iterator[TcpProxy]:
    with TcpProxy(mail_user.host, mail_user.imaps_port) as p:
        yield p
    assert not p.errors, p.errors


@pytest.fixture
def account(api, local_mail_env, mail_user, proxy) -> Account:
    """An account whose worker connections go through the proxy (the test's own do not)."""
    account = connect_account(api, mail_user, FOLDER_MAP)
    body = account.settings_body() | {"port": proxy.port}
    saved = api("PUT", "/v1/users/me/mail-settings", body, caller=account.caller)
    assert saved.status == 200, saved.body
    return account


def big_message(subject: str, days: float = 1) -> bytes:
    return make_message(subject=subject, date=days_ago(days), body=f"{subject}\n{BODY}")


def seed(account: Account, count: int, folder: str = "INBOX", prefix: str = "m") -> None:
    with account.user.client() as imap:
        imap.imap.multiappend(
            folder,
            [{"msg": big_message(f"{prefix}{i:02d}", 1 + i / 10), "date": days_ago(1 + i / 10)} for i in range(count)],
        )


def server_messages(account: Account) -> list[dict[str, Any]]:
    """Every message in the mapped folders: folder, uid, subject, Message-ID."""
    out = []
    with account.user.client() as imap:
        for folder in FOLDER_MAP.values():
            uids = imap.uids(folder)
            fetched = imap.imap.fetch(uids, [b"BODY.PEEK[HEADER.FIELDS (SUBJECT MESSAGE-ID)]"]) if uids else {}
            for uid, data in fetched.items():
                header = email.message_from_bytes(
                    data[b"BODY[HEADER.FIELDS (SUBJECT MESSAGE-ID)]"], policy=email.policy.default
                )
                out.append(
                    {
                        "folder": folder,
                        "uid": uid,
                        "subject": str(header["Subject"]),
                        "message_id": str(header["Message-ID"]).strip().strip("<>"),
                    }
                )
    return out


def assert_converged(account: Account, aws: dict[str, str], expected: int) -> None:
    """CRM == server: each server copy once, each CRM message at its server copy, no extras."""
    server = server_messages(account)
    crm = account.messages()
    assert len(server) == expected, Counter(m["subject"] for m in server)
    for key in ("subject", "internet_message_id"):
        duplicates = {v: n for v, n in Counter(m[key] for m in crm).items() if n > 1}
        assert not duplicates, f"duplicated in the CRM ({key}): {duplicates}"
    assert [m for m in crm if m["state"] != "synced"] == []
    assert [m["subject"] for m in crm if m["sync_state"] != "synced"] == []
    on_server = {(m["folder"], m["uid"]): m for m in server}
    for m in crm:
        copy = on_server.pop((m["server_folder"], m["uid"]), None)
        assert copy is not None, f"{m['subject']} points at no server copy"
        assert (copy["subject"], copy["message_id"]) == (m["subject"], m["internet_message_id"])
    assert on_server == {}, f"not in the CRM: {sorted(c['subject'] for c in on_server.values())}"
    # Every raw copy reads back verified, and none is left over (content-addressed: a rerun overwrites).
    checked_raw_copies(account.tenant, account.caller.user, [m["id"] for m in crm])


# -- the connection cut mid-FETCH -----------------------------------------------------------------


def test_cut_mid_fetch_is_retried_within_the_job(account: Account, proxy: TcpProxy, aws, monkeypatch) -> None:
    from mailsync.sync import engine

    monkeypatch.setattr(engine, "BATCH_COUNT", 10)
    seed(account, 30)
    # About 1.5 batches of bodies into the first connection: the first batch is stored and
    # checkpointed, the second is cut in the middle of a BODY[] literal.
    proxy.arm(Cut.after_server_bytes(len(big_message("x")) * 15))
    result = account.sync()
    assert proxy.cuts == 1
    assert result.status == "synced", result
    assert len(proxy.connections) == 2, "one retry on a fresh connection"
    assert result.outcome.created == 20, "the retry kept the first batch and resumed after it"
    assert account.sync().outcome.created == 0
    assert_converged(account, aws, 30)


def test_every_connection_cut_mid_fetch_fails_the_job_then_a_rerun_converges(
    account: Account, proxy: TcpProxy, aws, monkeypatch
) -> None:
    from mailsync import dal
    from mailsync.sync import engine

    monkeypatch.setattr(engine, "BATCH_COUNT", 10)
    seed(account, 12)
    # Half a batch into every connection, with a TCP reset: no attempt stores anything.
    proxy.arm(Cut.after_server_bytes(len(big_message("x")) * 5, times=None, how="reset"))
    result = account.sync()
    assert (result.status, result.error) == ("failed", "connect_failed")
    assert proxy.cuts == policy.CONNECT_ATTEMPTS
    assert dal.get_account("acme", "alice").status == "connect_failed"
    assert account.messages() == []

    proxy.disarm()
    assert account.sync().status == "synced"
    assert dal.get_account("acme", "alice").status == "ok"
    assert_converged(account, aws, 12)


# -- the connection cut mid-APPEND ----------------------------------------------------------------


def sent_copies(account: Account, message_id: str) -> int:
    return sum(1 for m in server_messages(account) if m["folder"] == "Sent" and m["message_id"] == message_id)


@pytest.mark.parametrize("where", ["mid_literal", "reply_lost"])
def test_cut_mid_append_then_rerun_leaves_one_copy(account: Account, proxy: TcpProxy, aws, where: str) -> None:

    raw = make_message(subject="offer letter", date=days_ago(0.1), body=BODY * 8)
    body = {"raw": base64.b64encode(raw).decode()}
    created = account.api("POST", "/v1/users/me/messages", body, caller=account.caller)
    assert created.status == 201, created.body
    message_id = created.body["internet_message_id"]
    if where == "mid_literal":
        # Every attempt dies halfway through the APPEND literal: the server never gets it.
        proxy.arm(Cut.after_client_bytes(len(raw) // 2, times=None))
        result = account.sync(reason="push")
        assert (result.status, result.error) == ("failed", "connect_failed")
        assert proxy.cuts == policy.CONNECT_ATTEMPTS
        assert sent_copies(account, message_id) == 0
        assert account.by_subject()["offer letter"]["sync_state"] == "pending"
        proxy.disarm()
        assert account.sync(reason="push").status == "synced"
    else:
        # The server stores the message, the tagged OK (APPENDUID) is lost with the connection:
        # the retry must find the copy instead of appending a second one.
        proxy.arm(Cut.reply_after_client_bytes(len(raw), times=None))
        assert account.sync(reason="push").status == "synced"
        assert proxy.cuts == 1
    account.sync()
    assert sent_copies(account, message_id) == 1
    assert_converged(account, aws, 1)
    assert account.by_subject()["offer letter"]["id"] == created.body["id"]


# -- the Lambda deadline mid-folder ---------------------------------------------------------------


def out_of_time_after(batches: int) -> Callable[[], bool]:
    """A deadline() that turns true once ``batches`` batches were started (checked before each)."""
    calls = iter(range(batches + 1))
    return lambda: next(calls, batches) >= batches


def queued_reasons(aws) -> list[str]:
    sqs = boto3.client("sqs")
    out = []
    while got := sqs.receive_message(QueueUrl=aws["SYNC_QUEUE_URL"], MaxNumberOfMessages=10).get("Messages"):
        for m in got:
            out.append(json.loads(m["Body"])["reason"])
            sqs.delete_message(QueueUrl=aws["SYNC_QUEUE_URL"], ReceiptHandle=m["ReceiptHandle"])
    return out


def test_deadline_mid_folder_then_continue(account: Account, aws, monkeypatch) -> None:
    from mailsync.sync import engine

    monkeypatch.setattr(engine, "BATCH_COUNT", 3)
    seed(account, 7, "INBOX", "in")
    seed(account, 2, "Archive", "ar")
    # First sync: out of time in the middle of INBOX, then again in the middle of the rest.
    result = account.sync(deadline=out_of_time_after(1))
    assert result.status == "incomplete"
    assert queued_reasons(aws) == ["continue"]
    assert len(account.messages()) == 3
    assert account.sync(reason="continue", deadline=out_of_time_after(1)).status == "incomplete"
    assert len(account.messages()) == 6
    assert account.sync(reason="continue").status == "synced"
    assert_converged(account, aws, 9)

    # A later sync with new mail (and a flag change) runs out of time as well.
    seed(account, 5, "INBOX", "new")
    with account.user.client() as imap:
        imap.add_flags("INBOX", imap.uids("INBOX")[0], ["\\Flagged"])
    queued_reasons(aws)
    assert account.sync(deadline=out_of_time_after(1)).status == "incomplete"
    assert queued_reasons(aws) == ["continue"]
    assert account.sync(reason="continue").status == "synced"
    assert account.sync().outcome.created == 0
    assert_converged(account, aws, 14)
    assert sum("\\Flagged" in m["flags"] for m in account.messages()) == 1


def test_move_while_a_first_sync_waits_for_its_next_run_keeps_the_id(account: Account, aws, monkeypatch) -> None:
    from mailsync.sync import engine

    monkeypatch.setattr(engine, "BATCH_COUNT", 3)
    seed(account, 5, "INBOX", "in")
    seed(account, 1, "Archive", "ar")
    assert account.sync(deadline=out_of_time_after(1)).status == "incomplete"
    moved = account.by_subject()["in00"]
    # The user files a message the CRM already has while the first sync waits for its next run.
    with account.user.client() as imap:
        imap.move("INBOX", moved["uid"], "Archive")
    assert account.sync(reason="continue").status == "synced"
    assert_converged(account, aws, 6)
    after = account.by_subject()["in00"]
    assert (after["id"], after["folder"]) == (moved["id"], "archive"), "a move keeps the id"


# -- S3 and DynamoDB throttling / 5xx -------------------------------------------------------------


@dataclass
class AwsFault:
    """Fail matching HTTP attempts of one operation: ``skip`` of them pass first, then ``times``
    (None: all until cleared) get the response ``respond`` builds from the request body."""

    service: str
    operation: str
    respond: Callable[[bytes], tuple[int, dict[str, str], bytes]]
    matches: Callable[[bytes], bool] = lambda body: True
    skip: int = 0
    times: int | None = None
    seen: int = 0
    injected: int = 0


def s3_error(code: str, status: int) -> Callable[[bytes], tuple[int, dict[str, str], bytes]]:
    xml = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected</Message></Error>'
    return lambda _body: (status, {"Content-Type": "application/xml"}, xml.encode())


def dynamodb_error(kind: str, status: int, **extra: Any) -> Callable[[bytes], tuple[int, dict[str, str], bytes]]:
    payload = {"__type": f"com.amazonaws.dynamodb.v20120810#{kind}", "message": "injected", **extra}
    return lambda _body: (status, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(payload).encode())


def all_unprocessed(body: bytes) -> tuple[int, dict[str, str], bytes]:
    """BatchWriteItem's own way of throttling: 200, nothing written, everything handed back."""
    items = json.loads(body)["RequestItems"]
    return 200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps({"UnprocessedItems": items}).encode()


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


class AwsFaults:
    """Injects faults below botocore's retry loop: every attempt, first or retried, may fail."""

    def __init__(self) -> None:
        self.rules: list[AwsFault] = []
        self._lock = threading.Lock()

    def add(self, fault: AwsFault) -> AwsFault:
        with self._lock:
            self.rules.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.rules = []

    def pick(self, service: str, operation: str, body: bytes) -> AwsFault | None:
        with self._lock:
            for rule in self.rules:
                if (rule.service, rule.operation) != (service, operation) or not rule.matches(body):
                    continue
                rule.seen += 1
                if rule.seen <= rule.skip or (rule.times is not None and rule.injected >= rule.times):
                    return None
                rule.injected += 1
                return rule
        return None


@pytest.fixture
def aws_faults(aws, monkeypatch: pytest.MonkeyPatch) -> AwsFaults:
    from botocore.awsrequest import AWSResponse
    from botocore.endpoint import Endpoint, convert_to_response_dict
    from botocore.retries.standard import ExponentialBackoff

    faults = AwsFaults()
    original = Endpoint._do_get_response

    def do_get_response(self: Endpoint, request: Any, operation_model: Any, context: Any) -> Any:
        body = request.body if isinstance(request.body, bytes) else b""
        rule = faults.pick(operation_model.service_model.endpoint_prefix, operation_model.name, body)
        if rule is None:
            return original(self, request, operation_model, context)
        status, headers, payload = rule.respond(body)
        http = AWSResponse(request.url, status, headers, _Body(payload))
        response = convert_to_response_dict(http, operation_model)
        parser = self._response_parser_factory.create_parser(operation_model.service_model.resolved_protocol)
        parsed = parser.parse(response, operation_model.output_shape)
        return (http, parsed), None

    monkeypatch.setattr(Endpoint, "_do_get_response", do_get_response)
    # botocore's backoff would sleep up to seconds per retry; the retries themselves stay.
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)
    return faults


def lease_is_free() -> bool:
    from mailsync import dal

    return dal.get_sync_state("acme", "alice").lease_owner is None


def test_s3_slowdown_and_5xx(account: Account, aws, aws_faults: AwsFaults, monkeypatch) -> None:
    from mailsync.sync import engine

    monkeypatch.setattr(engine, "BATCH_COUNT", 3)
    seed(account, 3, prefix="a")
    # A few SlowDowns spread over the parallel uploads: botocore's retries absorb them.
    fault = aws_faults.add(AwsFault("s3", "PutObject", s3_error("SlowDown", 503), times=3))
    assert account.sync().status == "synced"
    assert fault.injected == 3
    assert_converged(account, aws, 3)

    # An outage: the first batch of new mail (one pack) gets through, then S3 answers 500 to every attempt.
    seed(account, 6, prefix="b")
    aws_faults.clear()
    fault = aws_faults.add(AwsFault("s3", "PutObject", s3_error("InternalError", 500), skip=1))
    outcome = account.sync()
    # An AWS outage ends the job as a visible failure with backoff, not a raised record.
    assert (outcome.status, outcome.error) == ("failed", "internal_error")
    assert fault.injected >= 5, "botocore retried before giving up"
    assert lease_is_free(), "a failed job gives the account back"
    assert len(account.messages()) == 6, "the first batch stays"
    aws_faults.clear()
    assert account.sync().status == "synced"
    assert_converged(account, aws, 9)


def is_location_write(body: bytes) -> bool:
    return b"#L#" in body


@pytest.mark.parametrize("outage", ["server_error", "unprocessed_items"])
def test_dynamodb_batch_write_faults(account: Account, aws, aws_faults: AwsFaults, monkeypatch, outage: str) -> None:
    """The location records are written last in a batch: failing them leaves message items
    without locations, which a rerun must overwrite rather than duplicate."""

    from mailsync.sync import engine

    monkeypatch.setattr(engine, "BATCH_COUNT", 3)
    seed(account, 3, prefix="a")
    # Throttled twice: PynamoDB's client retries absorb it.
    throttled = dynamodb_error("ProvisionedThroughputExceededException", 400)
    fault = aws_faults.add(AwsFault("dynamodb", "BatchWriteItem", throttled, is_location_write, times=2))
    assert account.sync().status == "synced"
    assert fault.injected == 2
    assert_converged(account, aws, 3)

    # An outage: the first batch's locations go through, the second batch's never do.
    seed(account, 6, prefix="b")
    aws_faults.clear()
    respond = dynamodb_error("InternalServerError", 500) if outage == "server_error" else all_unprocessed
    fault = aws_faults.add(AwsFault("dynamodb", "BatchWriteItem", respond, is_location_write, skip=1))
    outcome = account.sync()
    assert (outcome.status, outcome.error) == ("failed", "internal_error")
    assert fault.injected >= 3
    assert lease_is_free()
    assert len(account.messages()) == 9, "the second batch's messages were written, not their locations"
    aws_faults.clear()
    assert account.sync().status == "synced"
    assert account.sync().outcome.created == 0
    assert_converged(account, aws, 9)


def test_dynamodb_transaction_fails_after_a_server_move_then_rerun(account: Account, aws, aws_faults) -> None:
    seed(account, 3)
    account.sync()
    before = account.by_subject()["m01"]
    with account.user.client() as imap:
        imap.move("INBOX", before["uid"], "Archive")
    cancelled = dynamodb_error(
        "TransactionCanceledException",
        400,
        CancellationReasons=[{"Code": "ThrottlingError", "Message": "injected"}] * 5,
    )
    fault = aws_faults.add(AwsFault("dynamodb", "TransactWriteItems", cancelled, lambda b: b"#L#Archive" in b))

    outcome = account.sync()
    assert (outcome.status, outcome.error) == ("failed", "internal_error")
    assert fault.injected >= 1
    aws_faults.clear()
    assert account.sync().status == "synced"
    assert_converged(account, aws, 3)
    after = account.by_subject()["m01"]
    assert (after["id"], after["folder"]) == (before["id"], "archive")


def test_dynamodb_throttled_after_the_append_then_rerun_leaves_one_copy(account: Account, aws, aws_faults) -> None:
    raw = make_message(subject="sent from the crm", date=days_ago(0.1))
    created = account.api(
        "POST", "/v1/users/me/messages", {"raw": base64.b64encode(raw).decode()}, caller=account.caller
    )
    assert created.status == 201, created.body
    # The APPEND reaches the server; recording where it went (a transaction) is throttled.
    throttled = dynamodb_error("ThrottlingException", 400)
    fault = aws_faults.add(AwsFault("dynamodb", "TransactWriteItems", throttled, lambda b: b"#L#Sent" in b))

    outcome = account.sync(reason="push")
    assert (outcome.status, outcome.error) == ("failed", "internal_error")
    assert fault.injected >= 4, "PynamoDB's client retried the throttled transaction"
    assert sent_copies(account, created.body["internet_message_id"]) == 1
    aws_faults.clear()
    assert account.sync(reason="push").status == "synced"
    account.sync()
    assert sent_copies(account, created.body["internet_message_id"]) == 1
    assert_converged(account, aws, 1)
    assert account.by_subject()["sent from the crm"]["id"] == created.body["id"]
