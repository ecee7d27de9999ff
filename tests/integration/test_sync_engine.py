"""Server to CRM against the real Dovecot: window, arrivals, flags, moves, removals, resets."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
import requests

from tests.integration.sync_support import Account, capture_events, connect_account, days_ago, message


@pytest.fixture
def account(api, local_mail_env, mail_user) -> Account:
    return connect_account(api, mail_user)


@pytest.fixture
def basic_account(api, local_mail_env, dovecot_basic, mail_user_basic, monkeypatch) -> Account:
    from mailsync.config import get_settings

    # Both Dovecot flavours have their own CA; the basic one's is trusted for this test.
    monkeypatch.setenv("MAILSYNC_EXTRA_CA_FILE", str(dovecot_basic.ca_file))
    get_settings.cache_clear()
    return connect_account(api, mail_user_basic)


def test_first_sync_imports_the_window_only(account: Account, aws) -> None:
    events = capture_events(aws["EVENT_BUS_NAME"])
    with account.user.client() as imap:
        imap.append("INBOX", message("recent", days=2, body="Hallo Welt, dit is de tekst."), internal_date=days_ago(2))
        imap.append("INBOX", message("old", days=40), internal_date=days_ago(40))
        imap.append("Sent", message("sent recently", days=1), flags=["\\Seen"], internal_date=days_ago(1))
        imap.append("Junk", message("spam", days=1), internal_date=days_ago(1))
    result = account.sync()
    assert result.status == "synced", result

    synced = account.synced()
    assert set(synced) == {"recent", "sent recently"}
    assert synced["recent"]["folder"] == "inbox" and synced["recent"]["seen"] is False
    assert synced["sent recently"]["folder"] == "sent" and synced["sent recently"]["seen"] is True
    assert synced["recent"]["snippet"].startswith("Hallo Welt")
    assert synced["recent"]["from"][0]["email"] == "alice@example.com"
    assert synced["recent"]["server_folder"] == "INBOX" and synced["recent"]["uid"] >= 1
    assert synced["recent"]["uidvalidity"] >= 1

    received = events.of_type("message.received")
    assert {e["id"] for e in received} == {m["id"] for m in synced.values()}
    assert all("alice@example.com" in e["participants"] for e in received)

    status = account.api("GET", "/v1/users/me/sync-status", caller=account.caller).body
    assert status["state"] == "idle" and status["last_success_at"]
    counts = {f["crm_folder"]: f["messages"] for f in status["folders"]}
    assert counts == {"inbox": 1, "sent": 1, "archive": 0}


def test_raw_message_is_stored_exactly(account: Account, aws) -> None:
    raw = message("exact bytes", days=1)
    with account.user.client() as imap:
        imap.append("INBOX", raw, internal_date=days_ago(1))
    account.sync()
    msg = account.synced()["exact bytes"]
    link = account.api("GET", f"/v1/messages/{msg['id']}/raw", caller=account.caller)
    assert link.status == 200
    # moto answers presigned URLs too: the link really downloads the message.
    download = requests.get(link.body["url"], timeout=10)
    assert download.status_code == 200
    assert download.content == raw


def test_new_arrivals_and_server_flag_changes(account: Account, aws) -> None:
    with account.user.client() as imap:
        uid = imap.append("INBOX", message("first", days=1), internal_date=days_ago(1))
    account.sync()
    events = capture_events(aws["EVENT_BUS_NAME"])
    with account.user.client() as imap:
        imap.append("INBOX", message("second", days=0.1), internal_date=days_ago(0.1))
        imap.add_flags("INBOX", uid, ["\\Seen", "\\Flagged"])
    account.sync()
    synced = account.synced()
    assert set(synced) == {"first", "second"}
    assert synced["first"]["seen"] is True
    assert "\\Flagged" in synced["first"]["flags"]
    updated = events.of_type("message.updated")
    assert [e["id"] for e in updated] == [synced["first"]["id"]]

    with account.user.client() as imap:
        imap.remove_flags("INBOX", uid, ["\\Seen"])
    account.sync()
    assert account.synced()["first"]["seen"] is False


def test_move_between_mapped_folders_keeps_the_id(account: Account) -> None:
    with account.user.client() as imap:
        uid = imap.append("INBOX", message("to archive", days=1), internal_date=days_ago(1))
    account.sync()
    before = account.synced()["to archive"]
    with account.user.client() as imap:
        imap.move("INBOX", uid, "Archive")
    account.sync()
    after = account.by_subject()["to archive"]
    assert after["id"] == before["id"]
    assert (after["folder"], after["state"]) == ("archive", "synced")
    assert len(account.messages()) == 1


def test_move_to_unmapped_folder_and_expunge_detach_with_reason(account: Account, aws) -> None:
    with account.user.client() as imap:
        junk_uid = imap.append("INBOX", message("to junk", days=1), internal_date=days_ago(1))
        gone_uid = imap.append("INBOX", message("to delete", days=1), internal_date=days_ago(1))
    account.sync()
    events = capture_events(aws["EVENT_BUS_NAME"])
    with account.user.client() as imap:
        imap.move("INBOX", junk_uid, "Junk")
        imap.expunge("INBOX", gone_uid)
    account.sync()
    messages = account.by_subject()
    assert (messages["to junk"]["state"], messages["to junk"]["detach_reason"]) == ("detached", "moved_unmapped")
    assert (messages["to delete"]["state"], messages["to delete"]["detach_reason"]) == ("detached", "removed")
    detached = {e["id"]: e["detach_reason"] for e in events.of_type("message.detached")}
    assert detached == {messages["to junk"]["id"]: "moved_unmapped", messages["to delete"]["id"]: "removed"}
    # The CRM keeps its archived copy, raw included.
    assert account.api("GET", f"/v1/messages/{messages['to delete']['id']}/raw", caller=account.caller).status == 200


def test_detached_message_moved_back_is_revived_with_its_id(account: Account) -> None:
    with account.user.client() as imap:
        uid = imap.append("INBOX", message("round trip", days=1), internal_date=days_ago(1))
    account.sync()
    original = account.synced()["round trip"]["id"]
    with account.user.client() as imap:
        imap.move("INBOX", uid, "Junk")
    account.sync()
    with account.user.client() as imap:
        junk_uid = imap.uids("Junk")[-1]
        imap.move("Junk", junk_uid, "INBOX")
    account.sync()
    revived = account.by_subject()["round trip"]
    assert (revived["id"], revived["state"], revived["detach_reason"]) == (original, "synced", None)


def test_uidvalidity_reset_keeps_ids_without_duplicates(account: Account, dovecot) -> None:
    with account.user.client() as imap:
        for i in range(5):
            imap.append("INBOX", message(f"m{i}", days=1 + i), internal_date=days_ago(1 + i))
        imap.append("INBOX", message("no id", days=1, message_id=None), internal_date=days_ago(1))
    account.sync()
    before = {s: m["id"] for s, m in account.synced().items()}
    dovecot.reset_uidvalidity(account.user.username, "INBOX")
    account.sync()
    after = account.messages()
    assert len(after) == 6
    assert {m["subject"]: m["id"] for m in after if m["state"] == "synced"} == before


def test_message_without_message_id_moves_by_content(account: Account) -> None:
    with account.user.client() as imap:
        uid = imap.append("INBOX", message("anonymous", days=1, message_id=None), internal_date=days_ago(1))
    account.sync()
    first = account.synced()["anonymous"]
    assert first["internet_message_id"] is None
    with account.user.client() as imap:
        imap.move("INBOX", uid, "Archive")
    account.sync()
    moved = account.by_subject()["anonymous"]
    assert (moved["id"], moved["folder"]) == (first["id"], "archive")


def test_invalid_mime_is_stored_raw(account: Account, aws) -> None:
    raw = (
        b"Subject: =?bogus-charset?Q?broken?=\r\nContent-Type: multipart/mixed\r\n\r\n\xff\xfe not mime at all \x80\r\n"
    )
    with account.user.client() as imap:
        imap.append("INBOX", raw, internal_date=days_ago(1))
    assert account.sync().status == "synced"
    [msg] = account.messages()
    assert msg["state"] == "synced"
    stored = account.api("GET", f"/v1/messages/{msg['id']}", caller=account.caller).body
    assert stored["size"] == len(raw)
    keys = boto3.client("s3").list_objects_v2(Bucket=aws["RAW_MAIL_BUCKET"])["Contents"]
    bodies = [boto3.client("s3").get_object(Bucket=aws["RAW_MAIL_BUCKET"], Key=k["Key"])["Body"].read() for k in keys]
    assert raw in bodies


def test_folder_removed_from_the_map_detaches_its_messages(account: Account) -> None:
    from mailsync.dal import _keys as keys
    from mailsync.dal._models import WindowModel

    with account.user.client() as imap:
        imap.append("Archive", message("archived", days=1), internal_date=days_ago(1))
    account.sync()
    archived = account.by_subject()["archived"]
    # The window items an earlier build kept per copy; only a sweep of the folder deleted them.
    tenant, user = account.caller.tenant, account.caller.user
    for folder in ("Archive", "INBOX"):
        WindowModel(keys.window_pk(tenant, user, folder), f"legacy-{folder}", id=archived["id"], loc_sk="x").save()
    account.api("PUT", "/v1/users/me/folder-map", {"inbox": "INBOX", "sent": "Sent"}, caller=account.caller)
    account.sync()
    archived = account.by_subject()["archived"]
    assert (archived["state"], archived["detach_reason"]) == ("detached", "moved_unmapped")
    assert [w.sk for w in WindowModel.query(keys.window_pk(tenant, user, "Archive"))] == []
    assert [w.sk for w in WindowModel.query(keys.window_pk(tenant, user, "INBOX"))] == ["legacy-INBOX"]


def test_messages_api_filters_and_pages(account: Account) -> None:
    with account.user.client() as imap:
        for i in range(7):
            flags = ["\\Seen"] if i % 2 else []
            imap.append("INBOX", message(f"page {i}", days=1 + i), flags=flags, internal_date=days_ago(1 + i))
        imap.append("Sent", message("sent one", days=1), internal_date=days_ago(1))
    account.sync()
    page = account.api("GET", "/v1/users/me/messages", query="limit=3", caller=account.caller).body
    assert len(page["messages"]) == 3 and page["next_cursor"]
    dates = [m["internal_date"] for m in account.messages()]
    assert dates == sorted(dates, reverse=True), "newest first"
    assert len(account.messages(folder="inbox")) == 7
    assert {m["subject"] for m in account.messages(folder="sent")} == {"sent one"}
    assert len(account.messages(folder="inbox", seen="true")) == 3
    since = days_ago(3.5).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert {m["subject"] for m in account.messages(folder="inbox", since=since)} == {"page 0", "page 1", "page 2"}
    bad = account.api("GET", "/v1/users/me/messages", query="cursor=garbage!", caller=account.caller)
    assert (bad.status, bad.body["error"]["field"]) == (422, "cursor")
    too_many = account.api("GET", "/v1/users/me/messages", query="limit=101", caller=account.caller)
    assert (too_many.status, too_many.body["error"]["field"]) == (422, "limit")


def test_messages_of_other_tenants_are_not_found(account: Account) -> None:
    from tests.conftest import Caller

    with account.user.client() as imap:
        imap.append("INBOX", message("private", days=1), internal_date=days_ago(1))
    account.sync()
    msg_id = account.synced()["private"]["id"]
    # A colleague sees non-confidential mail (it is in the dossiers); another tenant never.
    assert account.api("GET", f"/v1/messages/{msg_id}", caller=Caller("bob", "acme")).status == 200
    assert account.api("GET", f"/v1/messages/{msg_id}", caller=Caller("eve", "globex", "admin")).status == 404
    assert account.api("GET", f"/v1/messages/{msg_id}", caller=Caller("root", "acme", "admin")).status == 200


@pytest.mark.parametrize("flavour", ["full", "basic"])
def test_both_flavours_converge(flavour: str, request) -> None:
    acct: Account = request.getfixturevalue("account" if flavour == "full" else "basic_account")
    with acct.user.client() as imap:
        a = imap.append("INBOX", message("a", days=1), internal_date=days_ago(1))
        b = imap.append("INBOX", message("b", days=1), internal_date=days_ago(1))
        c = imap.append("INBOX", message("c", days=1), internal_date=days_ago(1))
    acct.sync()
    ids = {s: m["id"] for s, m in acct.synced().items()}
    with acct.user.client() as imap:
        imap.add_flags("INBOX", a, ["\\Seen"])
        imap.move("INBOX", b, "Archive")
        imap.expunge("INBOX", c)
        imap.append("INBOX", message("d", days=0.5), internal_date=days_ago(0.5))
    acct.sync()
    messages = acct.by_subject()
    assert messages["a"]["seen"] is True
    assert (messages["b"]["id"], messages["b"]["folder"]) == (ids["b"], "archive")
    assert (messages["c"]["state"], messages["c"]["detach_reason"]) == ("detached", "removed")
    assert messages["d"]["state"] == "synced"
    assert len(messages) == 4


def test_new_mail_is_announced_batch_by_batch_during_a_long_first_sync(
    account: Account, aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first sync of 60 messages stores them in two batches (50, then 10); each batch's
    message.received events go out once it is checkpointed (by the publisher thread, while the
    next batch is downloaded and stored), not all at the end: the CRM hears of new mail while a
    long first sync runs."""
    from mailsync import events as events_module

    events = capture_events(aws["EVENT_BUS_NAME"])
    with account.user.client() as imap:
        imap.imap.multiappend(
            "INBOX", [{"msg": message(f"m{i:02d}", days=1 + i / 100), "date": days_ago(1 + i / 100)} for i in range(60)]
        )
    published: list[int] = []
    publish = events_module.publish

    def counted(batch: list[events_module.Event]) -> int:
        published.append(sum(1 for e in batch if e.detail_type == "message.received"))
        return publish(batch)

    monkeypatch.setattr(events_module, "publish", counted)
    assert account.sync().status == "synced"
    assert [n for n in published if n] == [50, 10]
    assert len(events.of_type("message.received")) == 60


def test_without_condstore_flags_are_scanned_every_interval_and_at_once_on_new_mail(
    basic_account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dovecot "basic" has no CONDSTORE: a flag change leaves STATUS as it was, so the flag scan
    runs every MAILSYNC_FLAG_SCAN_MINUTES, or at once when STATUS shows new mail or an expunge."""
    import time
    import types

    from mailsync.config import get_settings
    from mailsync.sync import engine

    monkeypatch.setenv("MAILSYNC_FLAG_SCAN_MINUTES", "15")
    get_settings.cache_clear()
    account = basic_account
    with account.user.client() as imap:
        first = imap.append("INBOX", message("first", days=1), internal_date=days_ago(1))
    assert account.sync().status == "synced"

    with account.user.client() as imap:  # another program flags it: STATUS does not change
        imap.add_flags("INBOX", first, ["\\Flagged"])
    assert account.sync().status == "synced"
    assert "\\Flagged" not in account.synced()["first"]["flags"], "scanned again within the interval"

    later = types.SimpleNamespace(time=lambda: time.time() + 15 * 60 + 1)
    monkeypatch.setattr(engine, "time", later)
    assert account.sync().status == "synced"
    assert "\\Flagged" in account.synced()["first"]["flags"]

    with account.user.client() as imap:  # a flag change, then new mail: STATUS moves, scan at once
        imap.add_flags("INBOX", first, ["\\Seen"])
        imap.append("INBOX", message("second", days=0.5), internal_date=days_ago(0.5))
    assert account.sync().status == "synced"
    synced = account.synced()
    assert synced["first"]["seen"] is True and "second" in synced


def test_mail_past_the_window_is_detached_by_the_daily_sweep(
    account: Account, aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies are aged out by their locations' INTERNALDATE, once a day (no window item is kept):
    with the window shrunk from 30 to 3 days, a 5-day-old message stays synced for the rest of
    the day, then the sweep detaches it (``aged_out``) and forgets its location."""
    import time
    import types

    from mailsync import dal
    from mailsync.sync import engine

    with account.user.client() as imap:
        imap.append("INBOX", message("aging", days=5), internal_date=days_ago(5))
        imap.append("INBOX", message("staying", days=1), internal_date=days_ago(1))
    assert account.sync().status == "synced"
    ids = {subject: m["id"] for subject, m in account.synced().items()}
    assert set(ids) == {"aging", "staying"}
    items = boto3.client("dynamodb").scan(TableName=aws["MESSAGES_TABLE"])["Items"]
    assert [i["pk"]["S"] for i in items if "#W#" in i["pk"]["S"]] == [], "a window item was written"

    saved = account.api(
        "PUT", "/v1/users/me/mail-settings", account.settings_body() | {"sync_window_days": 3}, caller=account.caller
    )
    assert saved.status == 200, saved.body
    events = capture_events(aws["EVENT_BUS_NAME"])
    for hours in (0, 1.01):  # the sweep ran with the first sync: not again within the day
        monkeypatch.setattr(engine, "time", types.SimpleNamespace(time=lambda h=hours: time.time() + h * 3600))
        assert account.sync().status == "synced"
        assert set(account.synced()) == {"aging", "staying"}

    monkeypatch.setattr(engine, "time", types.SimpleNamespace(time=lambda: time.time() + 86_400 + 1))
    assert account.sync().status == "synced"
    messages = account.by_subject()
    assert (messages["aging"]["id"], messages["aging"]["state"]) == (ids["aging"], "detached")
    assert messages["aging"]["detach_reason"] == "aged_out"
    assert messages["staying"]["state"] == "synced"
    assert [loc.id for loc in dal.folder_locations(account.tenant, account.caller.user, "INBOX")] == [ids["staying"]]
    assert [(e["id"], e["detach_reason"]) for e in events.of_type("message.detached")] == [(ids["aging"], "aged_out")]


def test_a_sweep_that_reaches_its_limit_goes_on_next_sync(account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep detaches at most ``SWEEP_LIMIT`` copies a folder; with more aged out it is not
    recorded as done, so the next sync sweeps again instead of a day later."""
    from mailsync.sync import engine

    with account.user.client() as imap:
        for subject in ("old 1", "old 2"):
            imap.append("INBOX", message(subject, days=5), internal_date=days_ago(5))
    assert account.sync().status == "synced"
    saved = account.api(
        "PUT", "/v1/users/me/mail-settings", account.settings_body() | {"sync_window_days": 3}, caller=account.caller
    )
    assert saved.status == 200, saved.body
    monkeypatch.setattr(engine, "SWEEP_LIMIT", 1)
    monkeypatch.setattr(engine, "SWEEP_INTERVAL_SECONDS", 0)
    assert account.sync().status == "synced"
    assert len(account.synced()) == 1, "one copy detached by the first sweep"

    monkeypatch.setattr(engine, "SWEEP_INTERVAL_SECONDS", 86_400)
    assert account.sync().status == "synced"
    assert account.synced() == {}, "the sweep went on with the next sync, not a day later"
    states = {m["subject"]: (m["state"], m["detach_reason"]) for m in account.messages()}
    assert states == {"old 1": ("detached", "aged_out"), "old 2": ("detached", "aged_out")}


def test_a_sweep_cut_by_the_jobs_deadline_goes_on_next_sync(
    account: Account, aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep stops when the job's time is up, mid-folder as between folders: what it did not
    reach stays attached, the sweep is not recorded as done, and the next scheduled poll (with
    time, nothing else to do) detaches the rest instead of a day later; each copy once."""
    from mailsync import dal
    from mailsync.sync import engine
    from mailsync.sync.planner import jobs

    old = {"INBOX": ["old in 1", "old in 2", "old in 3"], "Archive": ["old ar 1"]}
    with account.user.client() as imap:
        for folder, subjects in old.items():
            for subject in subjects:
                imap.append(folder, message(subject, days=5), internal_date=days_ago(5))
        imap.append("INBOX", message("staying", days=1), internal_date=days_ago(1))
    assert account.sync().status == "synced"
    ids = {subject: m["id"] for subject, m in account.synced().items()}
    saved = account.api(
        "PUT", "/v1/users/me/mail-settings", account.settings_body() | {"sync_window_days": 3}, caller=account.caller
    )
    assert saved.status == 200, saved.body
    events = capture_events(aws["EVENT_BUS_NAME"])

    # The job's time is up once two copies are detached, whichever folder the sweep takes first:
    # counted by detachment, not by deadline checks, so the cut does not hang on how often the
    # engine asks before the sweep.
    detached: list[str] = []
    detach = dal.detach

    def counted(stored: Any, *args: Any, **kwargs: Any) -> None:
        detached.append(stored.id)
        detach(stored, *args, **kwargs)

    monkeypatch.setattr(dal, "detach", counted)
    monkeypatch.setattr(engine, "SWEEP_INTERVAL_SECONDS", 0)
    assert account.sync(deadline=lambda: len(detached) >= 2).status == "synced"
    assert len(detached) == 2
    assert len(account.synced()) == 3, "the copies the sweep did not reach stay attached"
    assert dal.get_sync_state(account.tenant, account.caller.user).last_sweep_at == 0, "recorded as not swept"

    monkeypatch.setattr(engine, "SWEEP_INTERVAL_SECONDS", 86_400)
    # The next poll comes a minute later; nothing changed on the server: the sweep alone is work.
    monkeypatch.setattr(jobs, "MIN_SECONDS_BETWEEN_SCHEDULED_SYNCS", 0)
    assert account.sync(reason="schedule").status == "synced"
    assert set(account.synced()) == {"staying"}, "the sweep went on with the next poll, not a day later"
    assert dal.get_sync_state(account.tenant, account.caller.user).last_sweep_at > 0
    aged = {ids[s] for subjects in old.values() for s in subjects}
    assert sorted(detached) == sorted(aged), "each copy detached once"
    states = {m["subject"]: (m["id"], m["state"], m["detach_reason"]) for m in account.messages()}
    assert states == {s: (ids[s], "detached", "aged_out") for s in ids if s != "staying"} | {
        "staying": (ids["staying"], "synced", None)
    }
    announced = [(e["id"], e["detach_reason"]) for e in events.of_type("message.detached")]
    assert sorted(announced) == sorted((i, "aged_out") for i in aged), "each detachment announced once"
    for folder in old:
        left = [loc.id for loc in dal.folder_locations(account.tenant, account.caller.user, folder)]
        assert left == ([ids["staying"]] if folder == "INBOX" else [])


def test_a_message_moved_away_and_back_is_revived_though_the_sync_that_detached_it_failed_after(
    account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The account's first detachment is recorded with the detachment itself: a sync that fails
    after its engine ran (its last checkpoint, written with the lease release, then lost) must
    not leave the account looking as if nothing was ever detached, or the message that comes
    back is stored a second time instead of revived (from a review)."""
    from mailsync import dal
    from mailsync.services import scheduling

    with account.user.client() as imap:
        uid = imap.append("INBOX", message("round trip", days=1), internal_date=days_ago(1))
    assert account.sync().status == "synced"
    original = account.synced()["round trip"]["id"]
    with account.user.client() as imap:
        imap.move("INBOX", uid, "Junk")  # unmapped: the message is detached

    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a write after the engine returned failed")

    with monkeypatch.context() as failing:
        failing.setattr(scheduling, "record_activity", fails)
        assert account.sync().status == "failed"
    assert dal.get_sync_state(account.tenant, account.caller.user).has_detached
    with account.user.client() as imap:
        imap.move("Junk", imap.uids("Junk")[-1], "INBOX")
    assert account.sync().status == "synced"
    copies = [m for m in account.messages() if m["subject"] == "round trip"]
    assert [(m["id"], m["state"]) for m in copies] == [(original, "synced")]
