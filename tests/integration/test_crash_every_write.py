"""A worker that dies after any one of its writes, then a rerun: the end state is always the same.

Two scripted sync jobs, run through the worker's own path (``sync_jobs.run_job``):
- ``two_way``: on a synced account, the job pushes CRM changes (mark read and move one message,
  send another) and pulls server changes (new mail with and without a Message-ID, flags set by
  another client, a move between mapped folders, an expunge);
- ``first_sync``: the job is an account's first sync (no checkpoint to resume from yet).

A dry run of each job counts its writes (DynamoDB, S3, IMAP; see tests/fixtures/crash.py) and
records the end state. Then, for every k, the scenario is built from scratch, the job dies right
after its k-th write (no lease release, no outcome), a rerun by the same worker finishes it, and
the end state must equal the dry run's: the same CRM messages (which pre-existing id, folder,
\\Seen, flags, state), the same server mailbox (no duplicate, no loss, no flag flipped back), no
CRM change left pending, every raw copy in S3 read back verified and none left over.

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

from devstack.dovecot import DovecotServer, MailUser
from tests.conftest import ApiCall
from tests.fixtures.crash import CrashInjector, WorkerCrashed
from tests.integration.raw_copies import checked_raw_copies
from tests.integration.sync_support import Account, connect_account, days_ago, message

FOLDER_MAP = {"inbox": "INBOX", "sent": "Sent", "archive": "Archive"}
OWNER = "worker-under-test"
SOAK = os.environ.get("MAILSYNC_SOAK") == "1"
COPIES = 3 if SOAK else 1
# Over the job's write count (the dry run asserts it); a k beyond the job's writes skips.
MAX_WRITES = 120 if SOAK else 40

# Arranged before the job: synced once, then changed on the server and in the CRM.
FLAGGED, MOVED, EXPUNGED, READ_AND_FILED = "flagged elsewhere", "moved elsewhere", "expunged", "read and filed"
NEW_WITH_ID, NEW_WITHOUT_ID, SENT = "new with id", "new without id", "sent from the crm"


def subjects(base: str) -> list[str]:
    return [base] if COPIES == 1 else [f"{base} {i}" for i in range(COPIES)]


def mail_server(request: pytest.FixtureRequest, flavour: str) -> DovecotServer:
    """The Dovecot of ``flavour`` ("full" or "basic"), its CA trusted by the worker."""
    from mailsync.config import get_settings

    request.getfixturevalue("local_mail_env")
    if flavour == "full":
        return request.getfixturevalue("dovecot")
    basic = request.getfixturevalue("dovecot_basic")
    # Each flavour has its own CA; trust the basic one's for this test.
    request.getfixturevalue("monkeypatch").setenv("MAILSYNC_EXTRA_CA_FILE", str(basic.ca_file))
    get_settings.cache_clear()
    return basic


@dataclass
class Scenario:
    account: Account
    ids_before: dict[str, str]  # subject -> CRM id, as synced before the job

    def run_job(self) -> Any:
        return self.account.sync(owner=OWNER)


def append(user: MailUser, folder: str, bases: tuple[str, ...], days: float, **kw: Any) -> None:
    with user.client() as imap:
        for i, subject in enumerate(s for base in bases for s in subjects(base)):
            imap.append(folder, message(subject, days=days + i / 100, **kw), internal_date=days_ago(days + i / 100))


def arrange_two_way(api: ApiCall, user: MailUser, who: str) -> Scenario:
    """A synced account, then changes on both sides: the job pushes and pulls."""
    account = connect_account(api, user, FOLDER_MAP, who=who)
    append(user, "INBOX", (FLAGGED, MOVED, EXPUNGED, READ_AND_FILED), days=2)
    assert account.sync(owner=OWNER).status == "synced"
    synced = account.synced()

    def uids(base: str) -> list[int]:
        return [synced[s]["uid"] for s in subjects(base)]

    with user.client() as imap:  # another mail client
        imap.add_flags("INBOX", uids(FLAGGED), ["\\Flagged", "\\Seen"])
        imap.move("INBOX", uids(MOVED), "Archive")
        imap.expunge("INBOX", uids(EXPUNGED))
    append(user, "INBOX", (NEW_WITH_ID,), days=1)
    append(user, "INBOX", (NEW_WITHOUT_ID,), days=1, message_id=None)

    for subject in subjects(READ_AND_FILED):  # the CRM: two ops on one message, then a send
        for change in ({"seen": True}, {"folder": "archive"}):
            done = api("PATCH", f"/v1/messages/{synced[subject]['id']}", change, caller=account.caller)
            assert done.status == 200, done.body
    ids = {subject: m["id"] for subject, m in synced.items()}
    for i, subject in enumerate(subjects(SENT)):
        raw = base64.b64encode(message(subject, days=i / 100)).decode()
        done = api("POST", "/v1/users/me/messages", {"raw": raw}, caller=account.caller)
        assert done.status == 201, done.body
        ids[subject] = done.body["id"]
    return Scenario(account, ids)


def arrange_first_sync(api: ApiCall, user: MailUser, who: str) -> Scenario:
    """A mailbox never synced: the job is the first sync, which has no checkpoint to resume from."""
    account = connect_account(api, user, FOLDER_MAP, who=who)
    append(user, "INBOX", (NEW_WITHOUT_ID,), days=1, message_id=None)
    if SOAK:
        append(user, "Archive", (NEW_WITH_ID,), days=1)
    return Scenario(account, {})


SCENARIOS = {"two_way": arrange_two_way, "first_sync": arrange_first_sync}
# Where each job writes: should a seam of the injector stop seeing writes (another IMAP library,
# another AWS SDK), the dry run says so instead of the test silently testing less.
WRITES_TO = {"two_way": {"dynamodb", "s3", "imap"}, "first_sync": {"dynamodb", "s3"}}
# Each k builds its scenario afresh (2-3 s), so `make test` (kept under 15 minutes) runs the
# two_way scenario on "basic" only (moves are COPY + STORE + EXPUNGE, APPEND has no APPENDUID: the
# most crash windows, 28 writes against 25 on "full"); a first sync's crash points there are
# test_sync_robustness.py's. The soak (MAILSYNC_SOAK=1) runs every scenario on both flavours,
# with three messages per step.
CASES = [(name, flavour) for name in SCENARIOS for flavour in ("basic", "full")] if SOAK else [("two_way", "basic")]


@dataclass(frozen=True)
class ServerCopy:
    folder: str
    uid: int
    subject: str
    message_id: str  # "" without one
    flags: tuple[str, ...]


def server_mailbox(user: MailUser) -> list[ServerCopy]:
    """Every message in the mapped folders, as another mail client sees it."""
    header = "HEADER.FIELDS (SUBJECT MESSAGE-ID)"
    out = []
    with user.client() as imap:
        for folder in FOLDER_MAP.values():
            uids = imap.uids(folder)
            fetched = imap.imap.fetch(uids, [f"BODY.PEEK[{header}]", "FLAGS"]) if uids else {}
            for uid, data in fetched.items():
                parsed = email.message_from_bytes(data[f"BODY[{header}]".encode()], policy=email.policy.default)
                flags = tuple(sorted({f.decode() for f in data[b"FLAGS"]} - {"\\Recent"}))
                out.append(ServerCopy(folder, uid, str(parsed["Subject"]), str(parsed["Message-ID"] or ""), flags))
    return out


def raw_objects(account: Account, messages: list[dict[str, Any]]) -> int:
    """The account's raw objects in S3, standalone or packs (content-addressed: a rerun
    overwrites, never adds); every message's copy read back and verified on the way."""
    return len(checked_raw_copies(account.tenant, account.caller.user, [m["id"] for m in messages]))


def end_state(scenario: Scenario, aws: dict[str, str]) -> dict[str, Any]:
    """What the job leaves behind, checked for what must hold after any finished job, and in a
    form comparable between scenarios built separately: CRM ids are named by the subject they had
    before the job ("new" for messages the job created); of a Message-ID (random per scenario)
    only whether the server copy has one; UIDs left out (a half-done COPY + EXPUNGE that a rerun
    finishes gives the message another UID)."""
    account = scenario.account
    messages = account.messages()
    server = server_mailbox(account.user)

    copies = Counter((c.folder, c.message_id or c.subject) for c in server)
    duplicates = {key: n for key, n in copies.items() if n > 1}
    assert not duplicates, f"duplicated on the server: {duplicates}"
    assert [s for s, n in Counter(m["subject"] for m in messages).items() if n > 1] == [], "duplicated in the CRM"
    assert [m["subject"] for m in messages if m["sync_state"] != "synced"] == [], "a CRM change left pending"
    at = {(c.folder, c.uid): c.subject for c in server}
    for m in messages:
        if m["state"] == "synced":
            assert at.get((m["server_folder"], m["uid"])) == m["subject"], f"{m['subject']} points elsewhere"

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
        for m in messages
    )
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    return {
        "crm": crm,
        "server": sorted((c.folder, c.subject, bool(c.message_id), c.flags) for c in server),
        "raw_objects": raw_objects(account, messages),
        "sync": (status["state"], status["account_status"], status["last_error"]),
    }


@dataclass(frozen=True)
class DryRun:
    writes: list[str]
    state: dict[str, Any]


_dry_runs: dict[tuple[str, str], DryRun] = {}


def dry_run(request: pytest.FixtureRequest, name: str, flavour: str) -> DryRun:
    """The job without a crash, once per scenario, flavour and session, on an account of its own."""
    if (name, flavour) not in _dry_runs:
        api, aws = request.getfixturevalue("api"), request.getfixturevalue("aws")
        user = mail_server(request, flavour).add_user()
        scenario = SCENARIOS[name](api, user, who=f"dry-{name}-{flavour}".replace("_", "-"))
        with CrashInjector() as counter:
            assert scenario.run_job().status == "synced"
        state = end_state(scenario, aws)
        assert len(counter.writes) <= MAX_WRITES, f"raise MAX_WRITES to {len(counter.writes)}"
        assert {w.service for w in counter.writes} == WRITES_TO[name], counter.writes
        _dry_runs[name, flavour] = DryRun([str(w) for w in counter.writes], state)
    return _dry_runs[name, flavour]


@pytest.mark.parametrize("k", range(1, MAX_WRITES + 1))
@pytest.mark.parametrize(("name", "flavour"), CASES)
def test_crash_after_write_k_then_rerun_converges(
    request: pytest.FixtureRequest, name: str, flavour: str, k: int
) -> None:
    expected = dry_run(request, name, flavour)
    if k > len(expected.writes):
        pytest.skip(f"the {name} job makes {len(expected.writes)} writes on the {flavour} flavour")
    # Fixtures are taken after that check: a k beyond the job's writes skips without provisioning.
    api, aws = request.getfixturevalue("api"), request.getfixturevalue("aws")
    scenario = SCENARIOS[name](api, mail_server(request, flavour).add_user(), who="alice")

    # The worker dies when it next touches AWS or IMAP; after its last write it may not.
    with CrashInjector(crash_after=k) as injector, contextlib.suppress(WorkerCrashed):
        scenario.run_job()
    assert [str(w) for w in injector.writes[:k]] == expected.writes[:k], "the job's writes are deterministic"
    assert injector.crashed or k == len(expected.writes), "only the last write may end the job before it dies"

    rerun = scenario.run_job()
    assert rerun.status == "synced", rerun
    assert end_state(scenario, aws) == expected.state
