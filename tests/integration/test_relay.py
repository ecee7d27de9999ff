"""Issue 13, the relay address: the API (moto) and the relay ingest function with SES-shaped
events (raw message in the bucket under ``relay/``, as SES's S3 action leaves it), including one
message arriving both by relay and by IMAP from a real Dovecot.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from devstack.lambda_runtime import LambdaContext, http_event, load_handler
from mailsync import blobstore, dal
from mailsync.config import get_settings
from tests.conftest import ApiCall, Caller, _reset_caches, api_response
from tests.integration.sync_support import captured_log_lines, connect_account, days_ago, message

DOMAIN = "relay.crm.test"
ALICE = Caller("alice", "acme", "user")
BOB = Caller("bob", "acme", "user")
ADMIN = Caller("root", "acme", "admin")
OTHER_TENANT_ADMIN = Caller("root", "globex", "admin")
PATH = "/v1/users/{}/relay-address"


@pytest.fixture
def relay_on(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("MAILSYNC_RELAY_DOMAIN", DOMAIN)
    _reset_caches()
    return aws


def address_of(api: ApiCall, caller: Caller, user: str = "me") -> str:
    got = api("GET", PATH.format(user), caller=caller)
    assert got.status == 200, got.body
    return str(got.body["address"])


_seq = iter(range(1, 1_000_000))


def deliver(
    raw: bytes, recipients: list[str], *, virus: str = "PASS", spam: str = "PASS", ses_id: str | None = None
) -> dict[str, int]:
    """What SES does for a receipt rule with an S3 action then a Lambda action."""
    ses_id = ses_id or f"sesmsg{next(_seq):06d}"
    boto3.client("s3").put_object(Bucket=get_settings().raw_mail_bucket, Key=f"relay/{ses_id}", Body=raw)
    verdict = {"status": "PASS"}
    event = {
        "Records": [
            {
                "eventSource": "aws:ses",
                "eventVersion": "1.0",
                "ses": {
                    "mail": {
                        "timestamp": "2026-12-01T10:00:00.000Z",
                        "source": "sender@example.com",
                        "messageId": ses_id,
                        "destination": recipients,
                    },
                    "receipt": {
                        "timestamp": "2026-12-01T10:00:00.000Z",
                        "recipients": recipients,
                        "spamVerdict": {"status": spam},
                        "virusVerdict": {"status": virus},
                        "spfVerdict": verdict,
                        "dkimVerdict": {"status": "GRAY"},
                        "dmarcVerdict": verdict,
                        "action": {"type": "Lambda", "invocationType": "Event"},
                    },
                },
            }
        ]
    }
    return load_handler("relay_ingest")(event, LambdaContext(function_name="RelayIngestFunction"))


def inbox(api: ApiCall, caller: Caller = ALICE) -> list[dict[str, Any]]:
    page = api("GET", "/v1/users/me/messages", query="folder=inbox&limit=100", caller=caller)
    assert page.status == 200, page.body
    return list(page.body["messages"])


# --- the address ---------------------------------------------------------------------------------


def test_address_is_made_on_first_read_and_stays(api: ApiCall, relay_on: Any) -> None:
    first = address_of(api, ALICE)
    local, _, domain = first.partition("@")
    assert domain == DOMAIN
    slug, _, secret = local.partition(".")
    assert slug == "alice" and len(secret) == 16  # 80 random bits
    assert address_of(api, ALICE) == first
    assert address_of(api, ADMIN, "alice") == first  # the tenant's admin reads the same one
    assert address_of(api, BOB) != first


def test_rotate_gives_a_new_address_and_the_old_one_stops_working(api: ApiCall, relay_on: Any) -> None:
    old = address_of(api, ALICE)
    rotated = api("POST", PATH.format("me") + "/rotate", caller=ALICE)
    assert rotated.status == 200, rotated.body
    new = rotated.body["address"]
    assert new != old and address_of(api, ALICE) == new

    to_old = deliver(message("To the old address"), [old])
    to_new = deliver(message("To the new address"), [new.upper()])  # addresses are case-insensitive

    assert to_old["unknown_address"] == 1 and to_old["stored"] == 0
    assert to_new["stored"] == 1
    assert [m["subject"] for m in inbox(api)] == ["To the new address"]


def test_rotate_before_any_read_creates_one(api: ApiCall, relay_on: Any) -> None:
    rotated = api("POST", PATH.format("alice") + "/rotate", caller=ADMIN)
    assert rotated.status == 200, rotated.body
    assert address_of(api, ALICE) == rotated.body["address"]


ATTACKS = [
    (BOB, "alice", 404),  # a colleague without the admin role; alice has no mail settings
    (OTHER_TENANT_ADMIN, "alice", None),  # another tenant's admin: their own tenant's "alice"
    (ALICE, "al|ice", 422),
    (ALICE, "alicé", 422),
    (ALICE, "a" * 129, 422),
    (ALICE, "..%2F..%2Fbob", 422),
]


def test_attacks_on_the_address_are_4xx(api: ApiCall, relay_on: Any) -> None:
    # One stack for all cases (each would otherwise provision its own).
    mine = address_of(api, ALICE)
    for caller, user, status in ATTACKS:
        for method, path in (("GET", PATH.format(user)), ("POST", PATH.format(user) + "/rotate")):
            got = api(method, path, caller=caller)
            if status is None:
                # Tenants never meet: "alice" of globex is another user with another address.
                assert got.status == 200 and got.body["address"] != mine
            else:
                assert got.status == status, (path, got.body)
                if status == 422:
                    assert got.body["error"]["field"] == "user_id"
    forged = http_event("GET", PATH.format("me"), claims={"sub": "a#b", "tenant_id": "acme"})
    assert api_response(load_handler("api")(forged, LambdaContext(function_name="ApiFunction"))).status == 401
    assert address_of(api, ALICE) == mine  # nothing rotated it


def test_a_colleague_with_mail_settings_is_forbidden(api: ApiCall, relay_on: Any) -> None:
    # alice has settings (any server: nothing connects here), bob tries her relay address.
    body = {"host": "imap.example.com", "port": 993, "username": "a", "password": "p", "security": "ssl"}
    assert api("PUT", "/v1/users/me/mail-settings", body, caller=ALICE).status == 201
    for method, path in (("GET", PATH.format("alice")), ("POST", PATH.format("alice") + "/rotate")):
        got = api(method, path, caller=BOB)
        assert got.status == 403, got.body


def test_relay_off_is_a_clear_409_and_mail_is_dropped(api: ApiCall, aws: Any) -> None:
    for method, path in (("GET", PATH.format("me")), ("POST", PATH.format("me") + "/rotate")):
        got = api(method, path, caller=ALICE)
        assert got.status == 409
        assert "RelayDomain" in got.body["error"]["message"]
    assert deliver(message("Nobody home"), [f"alice.x@{DOMAIN}"])["unknown_address"] == 1


# --- incoming mail ----------------------------------------------------------------------------------


def test_relayed_message_is_stored_like_synced_mail(api: ApiCall, relay_on: Any) -> None:
    address = address_of(api, ALICE)
    raw = message("Offer for Jan", sender="Jan <jan@klant.test>", to=address)
    outcome = deliver(raw, [address], spam="FAIL")

    assert outcome["stored"] == 1
    [shown] = inbox(api)
    assert shown["subject"] == "Offer for Jan" and shown["folder"] == "inbox"
    assert shown["state"] == "detached" and shown["detach_reason"] == "relayed"
    # The spam verdict is kept (shown), not a reason to drop it.
    assert shown["relay_verdicts"] == {"spam": "FAIL", "virus": "PASS", "spf": "PASS", "dkim": "GRAY", "dmarc": "PASS"}
    # The dossier has it, and the raw copy is the message SES received.
    dossier = api("GET", "/v1/contacts/jan@klant.test/messages", caller=ADMIN)
    assert [m["id"] for m in dossier.body["messages"]] == [shown["id"]]
    assert api("GET", f"/v1/messages/{shown['id']}/raw", caller=ALICE).status == 200
    stored = dal.find_message(shown["id"])
    assert stored is not None and stored.s3_key.startswith("raw/acme/alice/")
    assert blobstore.get_raw(stored.s3_key) == raw


def test_confidentiality_rules_apply(api: ApiCall, relay_on: Any) -> None:
    address = address_of(api, ALICE)
    deliver(message("Vertrouwelijk: salary"), [address])
    [shown] = inbox(api)
    assert shown["confidential"] is True
    colleague_view = api("GET", "/v1/users/alice/messages", caller=ADMIN)
    assert colleague_view.status == 200 and colleague_view.body["messages"] == []


def test_virus_verdict_means_not_stored(api: ApiCall, relay_on: Any) -> None:
    address = address_of(api, ALICE)
    outcome = deliver(message("Invoice.exe"), [address], virus="FAIL")
    assert outcome["virus"] == 1 and outcome["stored"] == 0
    assert inbox(api) == []


@pytest.mark.parametrize("virus", ["GRAY", "PROCESSING_FAILED"])
def test_an_undecided_virus_verdict_is_stored_and_shown(api: ApiCall, relay_on: Any, virus: str) -> None:
    outcome = deliver(message("Scan undecided"), [address_of(api, ALICE)], virus=virus)
    assert outcome["stored"] == 1 and outcome["virus"] == 0
    [stored] = inbox(api)
    assert stored["relay_verdicts"]["virus"] == virus


def test_unknown_addresses_and_other_domains_are_dropped_and_counted(api: ApiCall, relay_on: Any) -> None:
    address_of(api, ALICE)
    outcome = deliver(message("Guess"), [f"alice.aaaaaaaaaaaaaaaa@{DOMAIN}", "alice@elsewhere.test", "x" * 300])
    assert outcome["unknown_address"] == 3 and outcome["stored"] == 0
    assert inbox(api) == []


def test_redelivery_of_the_same_ses_message_is_one_message(api: ApiCall, relay_on: Any) -> None:
    address = address_of(api, ALICE)
    raw = message("Twice from SES")
    deliver(raw, [address], ses_id="sesmsg-same")
    deliver(raw, [address], ses_id="sesmsg-same")
    assert [m["subject"] for m in inbox(api)] == ["Twice from SES"]


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\xff garbage that is no mail at all" * 10,
        b"Subject: " + b"x" * 300_000 + b"\r\n\r\nbody",  # a header far over DynamoDB's item limit
    ],
    ids=["malformed", "huge-header"],
)
def test_malformed_or_oversized_mail_is_still_stored_raw(api: ApiCall, relay_on: Any, raw: bytes) -> None:
    address = address_of(api, ALICE)
    outcome = deliver(raw, [address])
    assert outcome["stored"] == 1
    [shown] = inbox(api)
    stored = dal.find_message(shown["id"])
    assert stored is not None and blobstore.get_raw(stored.s3_key) == raw


def test_over_the_size_cap_is_stored_whole_with_headers_parsed(
    api: ApiCall, relay_on: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILSYNC_MAX_MESSAGE_BYTES", "2048")
    _reset_caches()
    address = address_of(api, ALICE)
    raw = message("Big attachment", body="x" * 10_000)
    deliver(raw, [address])
    [shown] = inbox(api)
    assert shown["too_large"] is True and shown["subject"] == "Big attachment" and shown["size"] == len(raw)


def test_bad_events_are_dropped(relay_on: Any) -> None:
    handler = load_handler("relay_ingest")
    context = LambdaContext(function_name="RelayIngestFunction")
    assert (
        handler({"Records": [{"ses": {"mail": {"messageId": "../../etc"}, "receipt": {}}}]}, context)["malformed_event"]
        == 1
    )
    assert handler({"Records": "nope"}, context)["stored"] == 0
    assert handler({}, context)["stored"] == 0


def test_a_relayed_messages_log_key_ends_with_its_record(relay_on: Any) -> None:
    # Each line of a record's handling names SES's copy; the invocation's own lines after it
    # (and the next record's) must not name a message they are not about.
    with captured_log_lines("relay_ingest") as lines:
        counts = deliver(message("to nobody"), [f"nobody@{DOMAIN}"], ses_id="sesmsg-first")
    assert counts["unknown_address"] == 1
    summary = [line for line in lines() if line["message"] == "relayed mail"]
    assert len(summary) == 1 and "ses_message_id" not in summary[0], summary


# --- relay and IMAP: one message ----------------------------------------------------------------------


@pytest.mark.parametrize("message_id", ["<same-1@klant.test>", None], ids=["message-id", "content"])
def test_relay_then_imap_is_one_message(
    api: ApiCall, relay_on: Any, local_mail_env: Any, mail_user: Any, message_id: str | None
) -> None:
    account = connect_account(api, mail_user, {"inbox": "INBOX"})
    address = address_of(api, account.caller)
    raw = message("Both ways", message_id=message_id)
    # SES puts its trace lines in front of what it stores.
    ses_copy = (
        b"Return-Path: <jan@klant.test>\r\nReceived: from mx by inbound-smtp\r\nX-SES-Spam-Verdict: PASS\r\n" + raw
    )
    deliver(ses_copy, [address])
    [relayed] = account.messages()

    with mail_user.client() as imap:
        imap.append("INBOX", raw, internal_date=days_ago(1))
    assert account.sync().status == "synced"

    [one] = account.messages()
    assert one["id"] == relayed["id"]
    assert one["state"] == "synced" and one["uid"] is not None and one["folder"] == "inbox"
    assert one["relay_verdicts"]["spam"] == "PASS"


def test_a_different_imap_message_with_a_relayed_message_id_is_a_message_of_its_own(
    api: ApiCall, relay_on: Any, local_mail_env: Any, mail_user: Any
) -> None:
    # Anyone can relay mail with a Message-ID of their choosing before the real message syncs.
    account = connect_account(api, mail_user, {"inbox": "INBOX"})
    forged = message("Pay to this account", message_id="<real-1@klant.test>", sender="mallory@evil.test", body="A\n")
    deliver(forged, [address_of(api, account.caller)])
    [relayed] = account.messages()

    real = message("Quarterly figures", message_id="<real-1@klant.test>", body="B's own body\n")
    with mail_user.client() as imap:
        imap.append("INBOX", real, internal_date=days_ago(1))
    assert account.sync().status == "synced"

    by_id = {m["id"]: m for m in account.messages()}
    assert len(by_id) == 2
    assert by_id[relayed["id"]]["state"] == "detached" and by_id[relayed["id"]]["subject"] == "Pay to this account"
    [imap_copy] = [m for i, m in by_id.items() if i != relayed["id"]]
    assert imap_copy["state"] == "synced" and imap_copy["subject"] == "Quarterly figures"
    assert imap_copy["relay_verdicts"] is None
    assert "B's own body" in imap_copy["snippet"]


def test_mail_relayed_while_a_sync_runs_is_still_one_message_with_its_imap_copy(
    api: ApiCall, relay_on: Any, local_mail_env: Any, mail_user: Any
) -> None:
    from mailsync.sync.planner.folders import Checkpoint

    account = connect_account(api, mail_user, {"inbox": "INBOX"})
    assert account.sync().status == "synced"
    # A sync holds the lease and read the state before the relayed message arrived ...
    state = dal.take_lease("acme", "alice", "worker-1", 60)
    assert state is not None and not state.has_detached
    raw = message("Relayed mid-sync", message_id="<mid-sync@klant.test>")
    deliver(raw, [address_of(api, account.caller)])
    # ... and checkpoints its own, older view of the state.
    dal.save_checkpoint("acme", "alice", "worker-1", **Checkpoint(has_detached=False).to_dict())
    dal.give_back_lease("acme", "alice", "worker-1")

    with mail_user.client() as imap:
        imap.append("INBOX", raw, internal_date=days_ago(1))
    assert account.sync().status == "synced"
    [one] = account.messages()
    assert one["state"] == "synced" and one["relay_verdicts"] is not None


def test_imap_then_relay_is_one_message(api: ApiCall, relay_on: Any, local_mail_env: Any, mail_user: Any) -> None:
    account = connect_account(api, mail_user, {"inbox": "INBOX"})
    raw = message("IMAP first", message_id="<imap-first@klant.test>")
    with mail_user.client() as imap:
        imap.append("INBOX", raw, internal_date=days_ago(1))
    assert account.sync().status == "synced"
    [synced] = account.messages()

    outcome = deliver(raw, [address_of(api, account.caller)])

    assert outcome["duplicate"] == 1 and outcome["stored"] == 0
    assert [m["id"] for m in account.messages()] == [synced["id"]]


def test_events_announce_relayed_mail(api: ApiCall, relay_on: Any) -> None:
    from tests.integration.sync_support import capture_events

    capture = capture_events(relay_on["EVENT_BUS_NAME"])
    deliver(message("Announced"), [address_of(api, ALICE)])
    [received] = capture.of_type("message.received")
    assert received["user_id"] == "alice" and received["relayed"] is True


# --- the local stack's SMTP listener (devstack/smtp.py) ----------------------------------------------


def test_local_smtp_listener_does_what_ses_does(api: ApiCall, relay_on: Any) -> None:
    import smtplib

    from devstack.smtp import RelaySmtp

    address = address_of(api, ALICE)
    listener = RelaySmtp(DOMAIN, load_handler("relay_ingest"), port=0).start()
    try:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=30) as smtp:
            smtp.sendmail("jan@klant.test", [address], message("Through SMTP"))
            with pytest.raises(smtplib.SMTPRecipientsRefused):  # like SES: its domain only
                smtp.sendmail("jan@klant.test", ["alice@elsewhere.test"], message("Elsewhere"))
    finally:
        listener.stop()

    [shown] = inbox(api)
    assert shown["subject"] == "Through SMTP" and shown["relay_verdicts"]["spam"] == "DISABLED"
    # SES's copy stays under relay/ (the lifecycle rule expires it); the CRM's is under raw/.
    listed = boto3.client("s3").list_objects_v2(Bucket=get_settings().raw_mail_bucket, Prefix="relay/")
    assert listed["KeyCount"] == 1
    stored = dal.find_message(shown["id"])
    # The raw copy is the message as SES stored it: its trace lines first.
    assert stored is not None and blobstore.get_raw(stored.s3_key).startswith(b"Return-Path: <jan@klant.test>\r\n")
