"""The convergence test: CRM changes and another mail program, interleaved with syncs, at random.

A seeded random sequence mixes CRM operations through the API (mark read/unread, move, send)
with operations of an independent IMAP connection (new mail, flag toggles, moves, expunges,
moves to an unmapped folder). After quiescence, for every mapped folder the CRM's synced
messages equal the server's: same set by Message-ID, same \\Seen, same folder; no duplicate,
no loss, and a message's id never changes. Replay a failure with the seed it reports:

    MAILSYNC_CONVERGENCE_SEED=1234 MAILSYNC_CONVERGENCE_OPS=300 pytest tests/integration/test_convergence.py

mbsync as a second mail program, with its Maildir: test_convergence_mbsync.py.
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from devstack.dovecot import make_message
from mailsync.mime import normalise_msg_id, parse_message
from tests.integration.convergence_support import crm_change
from tests.integration.sync_support import Account, days_ago, flavoured_account

MAPPED = {"inbox": "INBOX", "sent": "Sent", "archive": "Archive", "trash": "Trash"}
SERVER_FOLDERS = [*MAPPED.values(), "Junk"]  # Junk is not mapped
SOAK = os.environ.get("MAILSYNC_SOAK") == "1"
# `make test` runs one seed of 80 operations per flavour (the two seeds were a tenth of make test's
# time); `make soak` (MAILSYNC_SOAK=1) ten seeds of 300.
OPS = int(os.environ.get("MAILSYNC_CONVERGENCE_OPS", "300" if SOAK else "80"))
SEED = int(os.environ.get("MAILSYNC_CONVERGENCE_SEED", "20261121"))
SEEDS = [SEED + n for n in range(10)] if SOAK else [SEED]


@pytest.fixture(params=["full", "basic"])
def account(request, api, local_mail_env, monkeypatch) -> Account:
    return flavoured_account(request, api, monkeypatch, MAPPED)


class Convergence:
    def __init__(self, account: Account, seed: int) -> None:
        self.account = account
        self.rng = random.Random(seed)
        self.seed = seed
        self.counter = 0
        self.ids: dict[str, str] = {}  # Message-ID -> the CRM id it first had
        self.log: list[str] = []
        self.listing: list[dict] | None = None  # the CRM's messages, listed since the last change

    def fail(self, why: str) -> None:
        tail = "\n  ".join(self.log[-25:])
        pytest.fail(f"seed={self.seed} ops={OPS}: {why}\nlast operations:\n  {tail}")

    def new_subject(self) -> str:
        self.counter += 1
        return f"conv {self.seed} {self.counter}"

    # -- the two sides ----------------------------------------------------------------------------

    def crm_listing(self) -> list[dict]:
        """The CRM's messages as the API lists them. Only a sync or a CRM change alters them (the
        other mail program's changes reach the CRM through a sync), so a listing serves until then."""
        if self.listing is None:
            self.listing = self.account.messages()
        return self.listing

    def crm_messages(self) -> list[dict]:
        return [m for m in self.crm_listing() if m["state"] == "synced"]

    def crm_op(self) -> None:
        kind, subject, body, response = crm_change(
            self.account, self.rng, self.crm_messages(), MAPPED, self.new_subject
        )
        self.listing = None
        if kind == "send":
            self.log.append(f"crm send {subject} -> {response.status}")
            return
        self.log.append(f"crm {kind} {subject} {body} -> {response.status}")
        if response.status not in (200, 409):
            self.fail(f"PATCH answered {response.status}: {response.body}")

    def server_op(self) -> None:
        with self.account.user.client() as imap:
            populated = [f for f in SERVER_FOLDERS if imap.uids(f)]
            kind = self.rng.choice(["new", "new", "toggle", "toggle", "move", "expunge"] if populated else ["new"])
            if kind == "new":
                folder = self.rng.choice(["INBOX", "INBOX", "Archive", "Junk"])
                subject = self.new_subject()
                age = self.rng.uniform(0, 5)
                flags = ["\\Seen"] if self.rng.random() < 0.3 else []
                imap.append(
                    folder, make_message(subject=subject, date=days_ago(age)), flags=flags, internal_date=days_ago(age)
                )
                self.log.append(f"server new {subject} in {folder}")
                return
            folder = self.rng.choice(populated)
            uid = self.rng.choice(imap.uids(folder))
            if kind == "toggle":
                if "\\Seen" in imap.flags(folder, uid):
                    imap.remove_flags(folder, uid, ["\\Seen"])
                else:
                    imap.add_flags(folder, uid, ["\\Seen"])
            elif kind == "move":
                dest = self.rng.choice([f for f in SERVER_FOLDERS if f != folder])
                imap.move(folder, uid, dest)
                kind = f"move to {dest}"
            else:
                imap.expunge(folder, uid)
            self.log.append(f"server {kind} {folder}/{uid}")

    def sync(self) -> None:
        self.listing = None
        result = self.account.sync(reason="push")
        if result.status not in ("synced", "incomplete"):
            self.fail(f"sync ended {result.status} {result.error}")
        self.log.append("sync")
        self.check_ids()

    def check_ids(self) -> None:
        for m in self.crm_listing():
            if m["internet_message_id"] is None:
                continue
            first = self.ids.setdefault(m["internet_message_id"], m["id"])
            if first != m["id"] and m["state"] == "synced":
                # A second live copy would be a duplicate; a changed id breaks the CRM's links.
                self.fail(f"{m['subject']} has id {m['id']}, first seen as {first}")

    # -- quiescence and the verdict ---------------------------------------------------------------

    def quiesce(self) -> None:
        for _ in range(6):
            self.sync()
            if not any(m["sync_state"] == "pending" for m in self.crm_listing()):
                break
        self.sync()
        self.sync()

    def server_view(self) -> dict[str, tuple[str, bool]]:
        """Message-ID -> (server folder, seen) over the mapped folders."""
        view: dict[str, tuple[str, bool]] = {}
        with self.account.user.client() as imap:
            for folder in MAPPED.values():
                for uid in imap.uids(folder):
                    message_id = normalise_msg_id(parse_message(imap.fetch_raw(folder, uid)).internet_message_id)
                    if message_id in view:
                        self.fail(f"the server holds {message_id} twice: a CRM change was applied twice")
                    view[message_id] = (folder, "\\Seen" in imap.flags(folder, uid))
        return view

    def verify(self) -> None:
        server = self.server_view()
        crm_messages = self.crm_messages()
        counts = Counter(m["internet_message_id"] for m in crm_messages)
        duplicates = [k for k, n in counts.items() if n > 1]
        if duplicates:
            self.fail(f"duplicates in the CRM: {duplicates}")
        crm = {m["internet_message_id"]: (MAPPED[m["folder"]], m["seen"]) for m in crm_messages}
        if set(crm) != set(server):
            only_server, only_crm = sorted(set(server) - set(crm)), sorted(set(crm) - set(server))
            self.fail(f"only on the server: {only_server}; only in the CRM: {only_crm}")
        wrong = {k: (crm[k], server[k]) for k in server if crm[k] != server[k]}
        if wrong:
            self.fail(f"folder/seen differ (crm, server): {wrong}")
        if any(m["sync_state"] == "pending" for m in crm_messages):
            self.fail("changes still pending after quiescence")


@pytest.mark.parametrize("seed", SEEDS)
def test_crm_and_another_mail_program_converge(account: Account, seed: int) -> None:
    run = Convergence(account, seed)
    for _ in range(OPS):
        if run.rng.random() < 0.5:
            run.crm_op()
        else:
            run.server_op()
        if run.rng.random() < 0.25:
            run.sync()
    run.quiesce()
    run.verify()
    assert len(run.ids) > OPS // 10, "the run exercised a real mailbox"
