"""ImapConnection's reads against a real Dovecot: the full flavour (CONDSTORE, QRESYNC, LIST-STATUS, ...)
and the basic one that hides them, so both the fast paths and the fallbacks are exercised."""

from __future__ import annotations

import datetime as dt

import pytest

from devstack.dovecot import DovecotServer, MailUser, make_message
from mailsync.errors import ConnectFailed, ExtensionMissing, FolderMissing
from mailsync.mailbox.connection import FETCH_CHUNK, SEARCH_CHUNK, compact_uid_set
from tests.integration.imap_support import BOTH, _counted, _session, _user


def _append(user: MailUser, folder: str, count: int) -> list[int]:
    with user.client() as client:
        return [client.append(folder, make_message(subject=f"m{i}")) for i in range(count)]


# -- capabilities and folders ------------------------------------------------------------


@BOTH
def test_capabilities_follow_what_the_server_advertises(request: pytest.FixtureRequest, flavour: str) -> None:
    with _session(_user(request, flavour)) as session:
        reader = session
        expected = flavour == "full"
        assert (reader.has_condstore, reader.has_qresync, reader.has_list_status) == (expected,) * 3
    with _session(_user(request, flavour), ignore_capabilities=["QRESYNC"]) as session:
        assert session.has_qresync is False
        assert session.has_condstore is (flavour == "full")


@BOTH
def test_status_uses_one_list_status_command_or_one_status_per_folder(
    request: pytest.FixtureRequest, flavour: str
) -> None:
    user = _user(request, flavour)
    _append(user, "INBOX", 2)
    _append(user, "Entwürfe", 1)
    with user.client() as client:
        expected = {
            name: client.imap.folder_status(name, ["MESSAGES", "UIDNEXT", "UIDVALIDITY"])
            for name in ("INBOX", "Entwürfe", "Sent")
        }
    wanted = ["INBOX", "Entwürfe", "Sent", "Does-Not-Exist"]
    with _session(user) as session:
        reader = session
        with _counted(session, 1 if flavour == "full" else len(wanted)):
            result = reader.status(wanted)
        with _counted(session, 1):
            single = reader.status(["Entwürfe"])

    assert set(result) == {"INBOX", "Entwürfe", "Sent"}
    for name, raw in expected.items():
        status = result[name]
        assert status.name == name
        assert (status.messages, status.uidnext, status.uidvalidity) == (
            raw[b"MESSAGES"],
            raw[b"UIDNEXT"],
            raw[b"UIDVALIDITY"],
        )
    assert result["INBOX"].messages == 2 and result["Entwürfe"].messages == 1
    if flavour == "full":
        assert all(isinstance(s.highestmodseq, int) and s.highestmodseq > 0 for s in result.values())
    else:
        assert all(s.highestmodseq is None for s in result.values())
    assert single == {"Entwürfe": result["Entwürfe"]}


@BOTH
def test_examine_reports_the_selected_folder(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    _append(user, "Entwürfe", 2)
    with _session(user) as session:
        reader = session
        listed = reader.status(["Entwürfe", "INBOX"])["Entwürfe"]
        with _counted(session, 1):
            examined = reader.examine("Entwürfe")
    assert examined == listed
    assert (examined.messages, examined.uidnext) == (2, 3)


@BOTH
def test_list_folder_names_skips_unselectable_folders(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        # Creating only the child leaves "Parent" as a \NonExistent/\Noselect hierarchy node.
        client.create_folder("Parent/Child")
        assert "Parent" in client.folders()
    with _session(user) as session:
        names = session.list_folder_names()
    assert "Parent" not in names
    assert {"INBOX", "Entwürfe", "Sent", "Parent/Child"} <= set(names)


@BOTH
def test_a_folder_removed_after_status_raises_folder_gone(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        client.create_folder("Temp")
    with _session(user) as session:
        reader = session
        assert "Temp" in reader.status(["INBOX", "Temp"])
        with user.client() as client:
            client.imap.delete_folder("Temp")
        with pytest.raises(FolderMissing) as excinfo:
            reader.examine("Temp")
        assert excinfo.value.folder == "Temp"
        assert isinstance(excinfo.value, FolderMissing)  # fails that folder or op, not the account
        with pytest.raises(FolderMissing):
            reader.find_internet_message_ids("Temp", ["a@example.com"])
        # The connection stays usable and the folder is simply absent now.
        assert "Temp" not in reader.status(["INBOX", "Temp"])
        assert reader.examine("INBOX").messages == 0


# -- changes since a modseq ----------------------------------------------------------------


def test_changes_since_with_qresync_reports_flag_changes_and_expunges(mail_user: MailUser) -> None:
    uids = _append(mail_user, "INBOX", 3)
    with _session(mail_user) as session:
        reader = session
        base = reader.examine("INBOX")
        assert base.highestmodseq is not None
        with mail_user.client() as client:
            client.add_flags("INBOX", uids[1], ["\\Seen", "$Forwarded"])
            client.expunge("INBOX", uids[2])

        # INBOX is selected, so QRESYNC costs UNSELECT + ENABLE once, then the EXAMINE.
        with _counted(session, 3):
            changes = reader.changes_since("INBOX", base.uidvalidity, base.highestmodseq)
        assert changes.changed_flags == {uids[1]: ("$Forwarded", "\\Seen")}
        assert changes.vanished == [uids[2]]
        assert changes.status.messages == 2
        assert changes.status.uidvalidity == base.uidvalidity
        assert changes.status.highestmodseq is not None and changes.status.highestmodseq > base.highestmodseq

        with _counted(session, 1):
            again = reader.changes_since("INBOX", base.uidvalidity, changes.status.highestmodseq)
        assert again.changed_flags == {}
        assert again.vanished == []


def test_changes_since_with_condstore_only_reports_flags_but_not_expunges(mail_user: MailUser) -> None:
    uids = _append(mail_user, "INBOX", 3)
    with _session(mail_user, ignore_capabilities=["QRESYNC"]) as session:
        reader = session
        base = reader.examine("INBOX")
        assert base.highestmodseq is not None
        with mail_user.client() as client:
            client.add_flags("INBOX", uids[0], ["\\Flagged"])
            client.expunge("INBOX", uids[2])

        with _counted(session, 2):  # EXAMINE + UID FETCH (CHANGEDSINCE)
            changes = reader.changes_since("INBOX", base.uidvalidity, base.highestmodseq)
        assert changes.changed_flags == {uids[0]: ("\\Flagged",)}
        assert changes.vanished is None
        assert changes.status.messages == 2

        # Nothing changed since: HIGHESTMODSEQ says so, and the FETCH is skipped.
        with _counted(session, 1):
            again = reader.changes_since("INBOX", base.uidvalidity, changes.status.highestmodseq)
        assert again.changed_flags == {}
        assert again.vanished is None


def test_changes_since_without_condstore_raises(mail_user_basic: MailUser) -> None:
    with _session(mail_user_basic) as session:
        reader = session
        with _counted(session, 0), pytest.raises(ExtensionMissing):
            reader.changes_since("INBOX", 1, 1)


@pytest.mark.parametrize("use_qresync", [True, False])
def test_changes_since_after_a_uidvalidity_change_returns_the_new_status_only(
    dovecot: DovecotServer, mail_user: MailUser, use_qresync: bool
) -> None:
    uids = _append(mail_user, "INBOX", 2)
    with _session(mail_user) as session:
        base = session.examine("INBOX")
    with mail_user.client() as client:
        client.add_flags("INBOX", uids[0], ["\\Seen"])
    new_validity = dovecot.reset_uidvalidity(mail_user.username, "INBOX")
    assert base.highestmodseq is not None
    with _session(mail_user, ignore_capabilities=[] if use_qresync else ["QRESYNC"]) as session:
        changes = session.changes_since("INBOX", base.uidvalidity, base.highestmodseq)
    assert changes.status.uidvalidity == new_validity != base.uidvalidity
    assert changes.changed_flags == {}
    assert changes.vanished is None


# -- searching -------------------------------------------------------------------------------


@BOTH
def test_search_since_excludes_older_internal_dates(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with user.client() as client:
        old = client.append("INBOX", make_message(subject="old"), internal_date=now - dt.timedelta(days=40))
        recent = client.append("INBOX", make_message(subject="recent"), internal_date=now - dt.timedelta(days=2))
        fresh = client.append("INBOX", make_message(subject="fresh"), internal_date=now)
    with _session(user) as session:
        reader = session
        reader.examine("INBOX")
        with _counted(session, 1):
            found = reader.search_since((now - dt.timedelta(days=30)).date())
        assert reader.search_since((now - dt.timedelta(days=50)).date()) == [old, recent, fresh]
    assert found == [recent, fresh]


@BOTH
def test_search_from_uid_drops_the_star_artefact(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    with _session(user) as session:
        reader = session
        reader.examine("INBOX")
        assert reader.search_from_uid(1) == []
    uids = _append(user, "INBOX", 2)
    with _session(user) as session:
        reader = session
        reader.examine("INBOX")
        with _counted(session, 1):
            assert reader.search_from_uid(uids[1] + 1) == []
        assert reader.search_from_uid(uids[1]) == [uids[1]]
        assert reader.search_from_uid(1) == uids


def test_searching_without_a_selected_folder_is_a_clear_error(mail_user: MailUser) -> None:
    with _session(mail_user) as session, pytest.raises(ConnectFailed, match="searching new messages"):
        session.search_from_uid(1)


# -- flags, summaries, bodies ---------------------------------------------------------------------


@BOTH
def test_flags_of_existing_uids_and_no_command_for_none(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        plain = client.append("INBOX", make_message())
        flagged = client.append("INBOX", make_message(), flags=["\\Answered", "$Label1"])
    with _session(user) as session:
        reader = session
        reader.examine("INBOX")
        with _counted(session, 0):
            assert reader.flags([]) == {}
        with _counted(session, 1):
            result = reader.flags([flagged, plain, 999])
    assert result == {plain: (), flagged: ("$Label1", "\\Answered")}


@BOTH
def test_summaries_report_flags_utc_date_size_and_message_id(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    berlin_summer = dt.timezone(dt.timedelta(hours=2))
    with_id = make_message(subject="with id", message_id="<Mixed.Case-1@Example.COM>")
    without_id = make_message(subject="no id", message_id=None)
    folded = b"Message-ID:\r\n   <folded@example.com>  \r\nSubject: folded\r\n\r\nbody\r\n"
    with user.client() as client:
        # Plain APPENDs without selecting INBOX (the helper's non-UIDPLUS path would), so that
        # no other session claims \Recent; a new user's first UIDs are 1, 2, 3.
        client.imap.append(
            "INBOX",
            with_id,
            flags=[b"\\Flagged", b"$Forwarded"],
            msg_time=dt.datetime(2024, 3, 5, 14, 30, 15, tzinfo=berlin_summer),
        )
        client.imap.append("INBOX", without_id)
        client.imap.append("INBOX", folded)
    a, b, c = 1, 2, 3
    with _session(user) as session:
        # Read-write SELECT first so this session owns \Recent, which must not leak out.
        session.client.select_folder("INBOX")
        assert b"\\Recent" in session.client.get_flags([a])[a]
        reader = session
        with _counted(session, 1):
            summaries = reader.summaries([c, a, b, a, 999])

    assert [s.uid for s in summaries] == [a, b, c]
    first, second, third = summaries
    assert first.flags == ("$Forwarded", "\\Flagged")
    assert first.internal_date == dt.datetime(2024, 3, 5, 12, 30, 15, tzinfo=dt.UTC)
    # Dovecot answers in its own zone (often UTC already); the contract is UTC regardless.
    assert first.internal_date.tzinfo is dt.UTC
    assert first.size == len(with_id)
    assert first.internet_message_id == "Mixed.Case-1@Example.COM"
    assert second.internet_message_id is None
    assert second.flags == ()
    assert third.internet_message_id == "folded@example.com"
    assert third.size == len(folded)


@BOTH
def test_fetch_returns_the_exact_bytes_and_leaves_seen_alone(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    raw = (
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.com>\r\n"
        b"Subject: exact\r\n"
        b"Message-ID: <exact@example.com>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\r\n"
        b"  trailing spaces  \r\n"
    )
    when = dt.datetime(2023, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    with user.client() as client:
        uid = client.append("INBOX", raw, flags=["$Forwarded"], internal_date=when)
    with _session(user) as session:
        # Read-write, so a plain BODY[] would set \Seen here.
        session.client.select_folder("INBOX")
        with _counted(session, 1):
            fetched = session.fetch([uid])
    assert len(fetched) == 1
    message = fetched[0]
    assert message.raw == raw
    assert (message.uid, message.flags, message.internal_date, message.size) == (uid, ("$Forwarded",), when, len(raw))
    with user.client() as client:
        assert client.flags("INBOX", uid) == {"$Forwarded"}


def test_summaries_of_a_large_folder_are_fetched_in_chunks(mail_user: MailUser) -> None:
    count = 1500
    template = (
        "From: bulk@example.com\r\nTo: bob@example.com\r\nSubject: bulk {n}\r\n"
        "Message-ID: <bulk-{n}@example.com>\r\n\r\nBody {n}\r\n"
    )
    messages = [template.format(n=n).encode() for n in range(count)]
    with mail_user.client() as client:
        # One MULTIAPPEND: a command per message would dominate the test's runtime.
        client.imap.multiappend("INBOX", messages)
    with _session(mail_user) as session:
        reader = session
        assert reader.examine("INBOX").messages == count
        uids = list(range(1, count + 1))
        with _counted(session, -(-count // FETCH_CHUNK)):
            summaries = reader.summaries(uids)
        # Scattered UIDs: the compact set has many ranges but the answer only what was asked.
        scattered = [u for u in uids if u % 3 and u % 7]
        with _counted(session, 1):
            partial = reader.summaries(scattered)
    assert [s.uid for s in summaries] == uids
    assert [s.internet_message_id for s in summaries] == [f"bulk-{n}@example.com" for n in range(count)]
    assert [s.size for s in summaries] == [len(m) for m in messages]
    assert [s.uid for s in partial] == scattered


# -- finding messages by Message-ID -----------------------------------------------------------------


@BOTH
def test_find_message_ids_tells_a_move_to_an_unmapped_folder_from_a_removal(
    request: pytest.FixtureRequest, flavour: str
) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        moved = client.append("INBOX", make_message(message_id="<moved@example.com>"))
        client.append("INBOX", make_message(message_id="<stays@example.com>"))
        removed = client.append("INBOX", make_message(message_id="<removed@example.com>"))
        client.create_folder("Projekte")
        # SEARCH HEADER matches substrings; this one contains "moved@example.com".
        client.append("Projekte", make_message(message_id="<unmoved@example.com>"))
        client.move("INBOX", moved, "Projekte")
        client.expunge("INBOX", removed)
    wanted = ["<moved@example.com>", "stays@example.com", "removed@example.com", "oved@example.com"]
    with _session(user) as session:
        reader = session
        with _counted(session, 0):
            assert reader.find_internet_message_ids("Projekte", []) == set()
        with _counted(session, 3):  # EXAMINE, UID SEARCH, UID FETCH of the hits
            in_projects = reader.find_internet_message_ids("Projekte", wanted)
        in_inbox = reader.find_internet_message_ids("INBOX", wanted)
    assert in_projects == {"moved@example.com"}
    assert in_inbox == {"stays@example.com"}


def test_find_message_ids_chunks_long_lists(mail_user: MailUser) -> None:
    with mail_user.client() as client:
        client.append("Archive", make_message(message_id="<needle-7@example.com>"))
        client.append("Archive", make_message(message_id="<needle-113@example.com>"))
    wanted = [f"needle-{n}@example.com" for n in range(120)]
    searches = -(-len(wanted) // SEARCH_CHUNK)
    with _session(mail_user) as session, _counted(session, 1 + searches + 1):
        found = session.find_internet_message_ids("Archive", wanted)
    assert found == {"needle-7@example.com", "needle-113@example.com"}


# -- pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uids", "expected"),
    [([5], "5"), ([3, 1, 2], "1:3"), ([1, 2, 3, 7, 9, 10, 10], "1:3,7,9:10"), ([4, 6, 8], "4,6,8")],
)
def test_compact_uid_set(uids: list[int], expected: str) -> None:
    assert compact_uid_set(uids) == expected
