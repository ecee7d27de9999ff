"""A POP3 sync job that dies after any one of its writes, then a rerun: nothing lost, nothing twice.

As tests/integration/test_crash_every_write.py does for IMAP: a dry run counts the job's writes
(DynamoDB, S3 and, here, the POP3 commands that change the maildrop: DELE, and QUIT, which
commits the deletions) and records the end state; then for every k the scenario is built from
scratch, the worker dies right after its k-th write (no QUIT, no lease release, no outcome; its
socket closed as the kernel would), a rerun by the same worker finishes the job, and the end
state must equal the dry run's: the same CRM messages, once each; the same maildrop (a message
deleted only once the CRM holds it); one raw copy in S3 per message.

The job: an account that keeps no copy, synced once (that message stored and deleted), then
three new messages arrive, one older than the window. It forgets the deleted message's UIDL,
stores the two recent ones (one without a Message-ID), remembers the old one unstored, and
deletes the two it stored.
"""

from __future__ import annotations

import contextlib
import poplib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Self

import pytest

from tests.conftest import ApiCall
from tests.fixtures.crash import CrashInjector, WorkerCrashed, Write
from tests.integration.pop3_support import PopAccount, deliver, on_server, pop_account

OWNER = "worker-under-test"
MAX_WRITES = 30
POP3_WRITES = {"DELE", "QUIT"}


class PopCrashInjector(CrashInjector):
    """``CrashInjector`` that also sees POP3: every command is an I/O call the dead worker never
    makes; DELE and QUIT count as writes once the server has answered them."""

    def __enter__(self) -> Self:
        super().__enter__()
        injector = self
        putcmd = poplib.POP3._putcmd
        shortcmd = poplib.POP3._shortcmd

        def pop_putcmd(conn: poplib.POP3, line: str) -> None:
            injector._starting("a POP3 command")
            return putcmd(conn, line)

        def pop_shortcmd(conn: poplib.POP3, line: str) -> bytes:
            answer = shortcmd(conn, line)
            name = line.split(" ", 1)[0].upper()
            if name in POP3_WRITES:
                injector._wrote(Write("pop3", name))
            return answer

        self._patch(poplib.POP3, "_putcmd", pop_putcmd)
        self._patch(poplib.POP3, "_shortcmd", pop_shortcmd)
        return self


@dataclass
class Scenario:
    account: PopAccount

    def run_job(self) -> Any:
        return self.account.sync(owner=OWNER)


def arrange(api: ApiCall, user: Any, who: str) -> Scenario:
    deliver(user, "stored before", days=2)
    account = pop_account(api, user, who=who, keep_copy=False)
    assert account.sync(owner=OWNER).status == "synced"
    assert on_server(user) == []
    deliver(user, "new with id", days=1)
    deliver(user, "new without id", days=1, message_id=None)
    deliver(user, "too old", days=45)
    return Scenario(account)


def raw_objects(account: PopAccount) -> int:
    from mailsync.aws import client
    from mailsync.config import get_settings

    listed = client("s3").list_objects_v2(Bucket=get_settings().raw_mail_bucket, Prefix="raw/")
    return sum(1 for o in listed.get("Contents", []) if f"/{account.tenant}/{account.caller.user}/" in o["Key"])


def end_state(scenario: Scenario) -> dict[str, Any]:
    account = scenario.account
    messages = account.messages()
    twice = [s for s, n in Counter(m["subject"] for m in messages).items() if n > 1]
    assert twice == [], f"stored twice: {twice}"
    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    return {
        "crm": sorted(
            (m["subject"], m["folder"], m["state"], m["detach_reason"], m["sync_state"], m["seen"]) for m in messages
        ),
        "server": on_server(account.user),
        "raw_objects": raw_objects(account),
        "sync": (status["state"], status["account_status"], status["last_error"]),
    }


_dry: dict[str, Any] = {}


def dry_run(api: ApiCall, dovecot: Any) -> dict[str, Any]:
    if not _dry:
        scenario = arrange(api, dovecot.add_user(), who="dry-run")
        with PopCrashInjector() as counter:
            assert scenario.run_job().status == "synced"
        state = end_state(scenario)
        writes = [str(w) for w in counter.writes]
        assert len(writes) <= MAX_WRITES, f"raise MAX_WRITES to {len(writes)}"
        assert {w.service for w in counter.writes} == {"dynamodb", "s3", "pop3"}, writes
        assert writes.index("pop3:DELE") > max(i for i, w in enumerate(writes) if w.startswith("s3:")), (
            "a message leaves the server only after it is stored"
        )
        assert state["crm"] == sorted(
            [
                ("new with id", "inbox", "detached", "pop3", "local", False),
                ("new without id", "inbox", "detached", "pop3", "local", False),
                ("stored before", "inbox", "detached", "pop3", "local", False),
            ]
        )
        assert state["server"] == ["too old"]
        _dry.update(writes=writes, state=state)
    return _dry


@pytest.mark.parametrize("k", range(1, MAX_WRITES + 1))
def test_crash_after_write_k_then_rerun_converges(api: ApiCall, local_mail_env, dovecot, k: int) -> None:
    expected = dry_run(api, dovecot)
    if k > len(expected["writes"]):
        pytest.skip(f"the POP3 job makes {len(expected['writes'])} writes")
    scenario = arrange(api, dovecot.add_user(), who="alice")

    with PopCrashInjector(crash_after=k) as injector, contextlib.suppress(WorkerCrashed):
        scenario.run_job()
    assert [str(w) for w in injector.writes[:k]] == expected["writes"][:k], "the job's writes are deterministic"
    assert injector.crashed or k == len(expected["writes"]), "only the last write may end the job before it dies"

    rerun = scenario.run_job()
    assert rerun.status == "synced", rerun
    assert end_state(scenario) == expected["state"]
