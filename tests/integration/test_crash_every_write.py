"""A worker that dies after any one of its writes, then a rerun: the end state is always the same.

One scripted sync job pushes CRM changes (mark read, move, send) and pulls server changes (new
mail with and without a Message-ID, a flag set by another client, a move between mapped folders,
an expunge). A dry run of the job counts its writes (DynamoDB, S3, IMAP; see
tests/fixtures/crash.py) and records the end state. Then, for every k, the same scenario is built
from scratch, the job dies right after its k-th write (no lease release, no outcome), a rerun by
the same worker finishes it, and the end state must equal the dry run's: the same CRM messages
(which pre-existing id, folder, \\Seen, flags, state), the same server mailbox (no duplicate, no
loss, no flag flipped back) and no CRM change left pending.

The crashed run's lease is still held for ``LEASE_SECONDS``; the rerun uses the crashed worker's
owner id, which ``acquire_lease`` lets through (a different worker would wait for the expiry).
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from devstack.dovecot import DovecotServer, MailUser
from tests.conftest import ApiCall
from tests.fixtures.crash import CrashInjector, WorkerCrashed
from tests.integration.sync_support import Account, connect_account, days_ago, message

FOLDER_MAP = {"inbox": "INBOX", "sent": "Sent", "archive": "Archive"}
OWNER = "worker-under-test"
SOAK = os.environ.get("MAILSYNC_SOAK") == "1"
# Each k builds the scenario afresh (about 2.5 s), so `make test` runs one flavour: "basic", whose
# moves are COPY + STORE + EXPUNGE and whose APPEND has no APPENDUID, has the most crash windows
# (28 writes, "full" 25). The soak (MAILSYNC_SOAK=1) runs both, with three messages per step.
FLAVOURS = ["basic", "full"] if SOAK else ["basic"]
COPIES = 3 if SOAK else 1
# Over the job's write count (the dry run asserts it); a k beyond the job's writes skips.
MAX_WRITES = 120 if SOAK else 40

# Arranged before the job: synced once, then changed on the server and in the CRM.
FLAGGED, MOVED, EXPUNGED, READ, FILED = "flagged elsewhere", "moved elsewhere", "expunged", "read", "filed"
NEW_WITH_ID, NEW_WITHOUT_ID, SENT = "new with id", "new without id", "sent from the crm"


def subjects(base: str) -> list[str]:
    return [base] if COPIES == 1 else [f"{base} {i}" for i in range(COPIES)]


@pytest.fixture(params=FLAVOURS)
def server(request, local_mail_env, monkeypatch) -> DovecotServer:
    from mailsync.config import get_settings

    if request.param == "full":
        return request.getfixturevalue("dovecot")
    basic = request.getfixturevalue("dovecot_basic")
    # Each flavour has its own CA; trust the basic one's for this test.
    monkeypatch.setenv("MAILSYNC_EXTRA_CA_FILE", str(basic.ca_file))
    get_settings.cache_clear()
    return basic


@dataclass
class Scenario:
    account: Account
    ids_before: dict[str, str]  # subject -> CRM id, as synced before the job

    def run_job(self) -> Any:
        return self.account.sync(owner=OWNER)


def arrange(api: ApiCall, user: MailUser, who: str) -> Scenario:
    """Everything up to the job under test: a first sync, then changes on both sides."""
    account = connect_account(api, user, FOLDER_MAP, who=who)
    arranged = [s for base in (FLAGGED, MOVED, EXPUNGED, READ, FILED) for s in subjects(base)]
    with user.client() as imap:
        for i, subject in enumerate(arranged):
            imap.append("INBOX", message(subject, days=2 + i / 100), internal_date=days_ago(2 + i / 100))
    assert account.sync(owner=OWNER).status == "synced"
    synced = account.synced()
    uids = {subject: synced[subject]["uid"] for subject in arranged}

    with user.client() as imap:  # another mail client
        imap.add_flags("INBOX", [uids[s] for s in subjects(FLAGGED)], ["\\Flagged", "\\Seen"])
        imap.move("INBOX", [uids[s] for s in subjects(MOVED)], "Archive")
        imap.expunge("INBOX", [uids[s] for s in subjects(EXPUNGED)])
        for i, subject in enumerate(subjects(NEW_WITH_ID)):
            imap.append("INBOX", message(subject, days=1 + i / 100), internal_date=days_ago(1 + i / 100))
        for i, subject in enumerate(subjects(NEW_WITHOUT_ID)):
            raw = message(subject, days=1 + i / 100, message_id=None)
            imap.append("INBOX", raw, internal_date=days_ago(1 + i / 100))

    for subject in subjects(READ):  # the CRM
        done = api("PATCH", f"/v1/messages/{synced[subject]['id']}", {"seen": True}, caller=account.caller)
        assert done.status == 200, done.body
    for subject in subjects(FILED):
        done = api("PATCH", f"/v1/messages/{synced[subject]['id']}", {"folder": "archive"}, caller=account.caller)
        assert done.status == 200, done.body
    for i, subject in enumerate(subjects(SENT)):
        raw = base64.b64encode(message(subject, days=i / 100)).decode()
        done = api("POST", "/v1/users/me/messages", {"raw": raw}, caller=account.caller)
        assert done.status == 201, done.body
    return Scenario(account, {m["subject"]: m["id"] for m in account.messages()})


def server_mailbox(user: MailUser) -> dict[str, list[tuple[str, str, tuple[str, ...]]]]:
    """Per mapped folder: (subject, Message-ID, flags) of every message, sorted; UIDs left out
    (a half-done COPY + EXPUNGE that a rerun finishes gives the same message another UID)."""
    header = "HEADER.FIELDS (SUBJECT MESSAGE-ID)"
    out = {}
    with user.client() as imap:
        for folder in FOLDER_MAP.values():
            uids = imap.uids(folder)
            fetched = imap.imap.fetch(uids, [f"BODY.PEEK[{header}]", "FLAGS"]) if uids else {}
            rows = []
            for data in fetched.values():
                parsed = email.message_from_bytes(data[f"BODY[{header}]".encode()], policy=email.policy.default)
                flags = sorted({f.decode() for f in data[b"FLAGS"]} - {"\\Recent"})
                rows.append((str(parsed["Subject"]), str(parsed["Message-ID"] or ""), tuple(flags)))
            out[folder] = sorted(rows)
    return out


def end_state(scenario: Scenario) -> dict[str, Any]:
    """What the job must leave behind, comparable between scenarios built separately: CRM ids
    are named by the subject they had before the job ("new" for messages the job created), and
    of a Message-ID (random per scenario) only whether the server copy has one."""
    account = scenario.account
    label = {crm_id: subject for subject, crm_id in scenario.ids_before.items()}
    crm = sorted(
        (
            m["subject"],
            label.get(m["id"], "new"),
            m["folder"],
            m["server_folder"],
            m["seen"],
            tuple(sorted(m["flags"])),
            m["state"],
            m["detach_reason"],
            m["sync_state"],
            m["last_op_error"],
        )
        for m in account.messages()
    )
    server = {
        folder: [(subject, bool(mid), flags) for subject, mid, flags in rows]
        for folder, rows in server_mailbox(account.user).items()
    }
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    return {"crm": crm, "server": server, "sync": (status["state"], status["account_status"], status["last_error"])}


def assert_consistent(scenario: Scenario) -> None:
    """Holds after any finished job: nothing twice, every CRM message whole and at its own
    server copy, no CRM change left pending."""
    account = scenario.account
    duplicates = {
        (folder, key): n
        for folder, rows in server_mailbox(account.user).items()
        for key, n in Counter(mid or subject for subject, mid, _flags in rows).items()
        if n > 1
    }
    assert not duplicates, f"duplicated on the server: {duplicates}"
    messages = account.messages()
    assert [s for s, n in Counter(m["subject"] for m in messages).items() if n > 1] == [], "duplicated in the CRM"
    assert [m["subject"] for m in messages if m["sync_state"] != "synced"] == [], "a CRM change left pending"
    with account.user.client() as imap:
        for m in messages:
            subject = f"Subject: {m['subject']}\r\n".encode()
            link = account.api("GET", f"/v1/messages/{m['id']}/raw", caller=account.caller)
            assert link.status == 200, link.body
            assert subject in requests.get(link.body["url"], timeout=10).content, f"{m['subject']}: raw copy lost"
            if m["state"] == "synced":
                assert subject in imap.fetch_raw(m["server_folder"], m["uid"]), f"{m['subject']} points elsewhere"


@dataclass(frozen=True)
class DryRun:
    writes: list[str]
    state: dict[str, Any]


_dry_runs: dict[str, DryRun] = {}


def dry_run(api: ApiCall, server: DovecotServer) -> DryRun:
    """The job without a crash, once per flavour and session, on an account of its own."""
    if server.flavour not in _dry_runs:
        scenario = arrange(api, server.add_user(), who=f"dry-{server.flavour}")
        with CrashInjector() as counter:
            assert scenario.run_job().status == "synced"
        assert_consistent(scenario)
        state = end_state(scenario)
        assert len(counter.writes) <= MAX_WRITES, f"raise MAX_WRITES to {len(counter.writes)}"
        # The injector sees the job's writes where they leave the process; should a seam change
        # (another IMAP library, another AWS SDK), this says so instead of testing nothing.
        assert {w.service for w in counter.writes} == {"dynamodb", "s3", "imap"}, counter.writes
        _dry_runs[server.flavour] = DryRun([str(w) for w in counter.writes], state)
    return _dry_runs[server.flavour]


@pytest.mark.parametrize("k", range(1, MAX_WRITES + 1))
def test_crash_after_write_k_then_rerun_converges(api, aws, server: DovecotServer, k: int) -> None:
    expected = dry_run(api, server)
    if k > len(expected.writes):
        pytest.skip(f"the job makes {len(expected.writes)} writes on the {server.flavour} flavour")
    scenario = arrange(api, server.add_user(), who="alice")

    # The worker dies when it next touches AWS or IMAP; after its last write it may not.
    with CrashInjector(crash_after=k) as injector, contextlib.suppress(WorkerCrashed):
        scenario.run_job()
    assert [str(w) for w in injector.writes[:k]] == expected.writes[:k], "the job's writes are deterministic"
    assert injector.crashed or k == len(expected.writes), "only the last write may end the job before it dies"

    rerun = scenario.run_job()
    assert rerun.status == "synced", rerun
    assert_consistent(scenario)
    assert end_state(scenario) == expected.state
