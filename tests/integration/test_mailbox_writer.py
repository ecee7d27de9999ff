"""ImapConnection's writes against a real Dovecot: the full flavour (MOVE, UIDPLUS, QRESYNC, ...) and the
basic one that hides them, so both the one-command paths and the fallbacks are exercised."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re

import pytest

from devstack.dovecot import MailUser, make_message
from mailsync.config import Settings
from mailsync.errors import ConnectFailed, FolderMissing, OperationRefused
from mailsync.mailbox.base import ServerParams
from mailsync.mailbox.connection import ImapConnection, open_imap
from tests.integration.imap_support import BOTH, _counted, _session, _user


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _snapshot(user: MailUser, folder: str) -> dict[int, tuple[bytes, frozenset[str]]]:
    """Every message of ``folder`` as uid -> (raw, flags), read over a separate connection."""
    with user.client() as client:
        return {
            uid: (client.fetch_raw(folder, uid), frozenset(client.flags(folder, uid))) for uid in client.uids(folder)
        }


# -- capabilities ------------------------------------------------------------------------


@BOTH
def test_capabilities_follow_what_the_server_advertises(request: pytest.FixtureRequest, flavour: str) -> None:
    with _session(_user(request, flavour)) as session:
        writer = session
        assert (writer.has_move, writer.has_uidplus) == (flavour == "full",) * 2


# -- set_seen ------------------------------------------------------------------------------


@BOTH
def test_set_seen_changes_only_seen_and_keeps_the_folder_selected(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        uid = client.append("INBOX", make_message(), flags=["\\Flagged", "$Label1"])
    with _session(user) as session:
        writer = session
        with _counted(session, 2):  # SELECT, UID STORE
            assert writer.set_seen("INBOX", uid, True) == ("$Label1", "\\Flagged", "\\Seen")
        with user.client() as client:
            assert client.flags("INBOX", uid) == {"$Label1", "\\Flagged", "\\Seen"}
        with _counted(session, 1):  # no second SELECT
            assert writer.set_seen("INBOX", uid, False) == ("$Label1", "\\Flagged")
        with user.client() as client:
            assert client.flags("INBOX", uid) == {"$Label1", "\\Flagged"}
        # Nothing changes, so Dovecot sends no FETCH and the flags are fetched instead.
        with _counted(session, 2):
            assert writer.set_seen("INBOX", uid, False) == ("$Label1", "\\Flagged")


@BOTH
def test_set_seen_keeps_flags_another_client_set_meanwhile(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        uid = client.append("INBOX", make_message())
    with _session(user) as session:
        writer = session
        assert writer.set_seen("INBOX", uid, True) == ("\\Seen",)
        with user.client() as client:
            client.add_flags("INBOX", uid, ["\\Answered", "$Label1"])
        assert writer.set_seen("INBOX", uid, False) == ("$Label1", "\\Answered")
    with user.client() as client:
        assert client.flags("INBOX", uid) == {"$Label1", "\\Answered"}


@BOTH
def test_set_seen_on_an_expunged_uid_returns_none_and_changes_nothing(
    request: pytest.FixtureRequest, flavour: str
) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        keep = client.append("INBOX", make_message(subject="keep"), flags=["\\Flagged"])
        gone = client.append("INBOX", make_message(subject="gone"))
    with _session(user) as session:
        writer = session
        writer.set_seen("INBOX", keep, False)  # the folder is selected when the expunge happens
        with user.client() as client:
            client.expunge("INBOX", gone)
        before = _snapshot(user, "INBOX")
        with _counted(session, 2):  # UID STORE (no FETCH back), UID FETCH (nothing)
            assert writer.set_seen("INBOX", gone, True) is None
        assert writer.set_seen("INBOX", 999, True) is None
    assert _snapshot(user, "INBOX") == before
    assert set(before) == {keep}
    assert before[keep][1] == {"\\Flagged"}


@BOTH
def test_set_seen_in_a_missing_folder_raises_folder_gone(request: pytest.FixtureRequest, flavour: str) -> None:
    with _session(_user(request, flavour)) as session, pytest.raises(FolderMissing):
        session.set_seen("No-Such-Folder", 1, True)


# -- move --------------------------------------------------------------------------------


@BOTH
def test_move_returns_the_new_uid_and_spares_messages_others_marked_deleted(
    request: pytest.FixtureRequest, flavour: str
) -> None:
    user = _user(request, flavour)
    raw = make_message(subject="to be archived")
    message_id = "<" + raw.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode() + ">"
    with user.client() as client:
        # Archive already holds messages, so the new UID differs from the source UID.
        for i in range(3):
            client.append("Archive", make_message(subject=f"old {i}"))
        first = client.append("INBOX", make_message(subject="first"))
        uid = client.append("INBOX", raw, flags=["\\Flagged", "$Label1"])
        trashed = client.append("INBOX", make_message(subject="someone else's trash"))
        client.add_flags("INBOX", trashed, ["\\Deleted"])
    with _session(user) as session:
        writer = session
        # full: SELECT, UID MOVE. basic: SELECT, UID SEARCH, STATUS, UID COPY, UID STORE,
        # UID STORE (unmark), EXPUNGE, UID STORE (re-mark), EXAMINE Archive, UID FETCH.
        with _counted(session, 2 if flavour == "full" else 10):
            new_uid = writer.move("INBOX", uid, "Archive", internet_message_id=message_id, content_sha256=_sha(raw))
    assert new_uid is not None and new_uid != uid
    archive = _snapshot(user, "Archive")
    assert archive[new_uid] == (raw, {"\\Flagged", "$Label1"})
    inbox = _snapshot(user, "INBOX")
    assert set(inbox) == {first, trashed}
    assert "\\Deleted" in inbox[trashed][1]
    assert "\\Deleted" not in inbox[first][1]


@BOTH
def test_move_of_a_message_already_moved_returns_none_and_moves_nothing(
    request: pytest.FixtureRequest, flavour: str
) -> None:
    user = _user(request, flavour)
    raw = make_message(subject="once only")
    with user.client() as client:
        other = client.append("INBOX", make_message(subject="stays"))
        uid = client.append("INBOX", raw)
    with _session(user) as session:
        writer = session
        new_uid = writer.move("INBOX", uid, "Archive", internet_message_id=None, content_sha256=_sha(raw))
        assert new_uid is not None
        # A repeat after a crash: full: UID MOVE on the still selected INBOX. basic: SELECT
        # (the fallback left Archive selected), UID SEARCH.
        with _counted(session, 1 if flavour == "full" else 2):
            assert writer.move("INBOX", uid, "Archive", internet_message_id=None, content_sha256=_sha(raw)) is None
        # Moved away by another client: nothing to do either.
        with user.client() as client:
            client.move("INBOX", other, "Junk")
        assert writer.move("INBOX", other, "Archive", internet_message_id=None, content_sha256=None) is None
    assert list(_snapshot(user, "Archive")) == [new_uid]
    assert len(_snapshot(user, "Junk")) == 1
    assert _snapshot(user, "INBOX") == {}


@BOTH
@pytest.mark.parametrize("pass_hash", [True, False], ids=["hash-given", "hash-computed"])
def test_move_of_a_message_without_message_id_finds_it_by_content(
    request: pytest.FixtureRequest, flavour: str, pass_hash: bool
) -> None:
    user = _user(request, flavour)
    raw = make_message(subject="no id", message_id=None, date=dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    assert b"Message-ID" not in raw
    with user.client() as client:
        # An identical copy already in the destination must not be taken for the moved one.
        decoy = client.append("Entwürfe", raw)
        client.append("Entwürfe", make_message(subject="unrelated", message_id=None))
        uid = client.append("INBOX", raw, flags=["\\Seen"])
    with _session(user) as session:
        new_uid = session.move(
            "INBOX", uid, "Entwürfe", internet_message_id=None, content_sha256=_sha(raw) if pass_hash else None
        )
    assert new_uid is not None and new_uid > decoy
    drafts = _snapshot(user, "Entwürfe")
    assert drafts[new_uid] == (raw, {"\\Seen"})
    assert drafts[decoy] == (raw, frozenset())
    assert _snapshot(user, "INBOX") == {}


@BOTH
def test_move_tells_its_copy_from_older_mail_with_the_same_message_id(
    request: pytest.FixtureRequest, flavour: str
) -> None:
    user = _user(request, flavour)
    raw = make_message(subject="the real one", message_id="<same@mailsync.test>")
    with user.client() as client:
        decoy = client.append("Archive", make_message(subject="older copy", message_id="<same@mailsync.test>"))
        uid = client.append("INBOX", raw)
    with _session(user) as session:
        new_uid = session.move("INBOX", uid, "Archive", internet_message_id="same@mailsync.test", content_sha256=None)
    assert new_uid is not None and new_uid != decoy
    assert _snapshot(user, "Archive")[new_uid][0] == raw


@BOTH
def test_move_to_a_missing_folder_raises_folder_gone_and_keeps_the_message(
    request: pytest.FixtureRequest, flavour: str
) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        uid = client.append("INBOX", make_message())
    before = _snapshot(user, "INBOX")
    with _session(user) as session:
        writer = session
        with pytest.raises(FolderMissing) as excinfo:
            writer.move("INBOX", uid, "No-Such-Folder", internet_message_id=None, content_sha256=None)
        assert excinfo.value.folder == "No-Such-Folder"
        with pytest.raises(FolderMissing) as excinfo:
            writer.move("No-Such-Source", uid, "Archive", internet_message_id=None, content_sha256=None)
        assert excinfo.value.folder == "No-Such-Source"
    assert _snapshot(user, "INBOX") == before


# -- append and find -----------------------------------------------------------------------


@BOTH
def test_append_returns_the_uid_with_flags_and_internal_date(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    raw = make_message(subject="sent by Mailsync", message_id="<append@mailsync.test>")
    when = dt.datetime(2021, 3, 4, 5, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with user.client() as client:
        client.append("Sent", make_message(subject="already there"))
    with _session(user) as session:
        writer = session
        # full: APPEND. basic: STATUS, APPEND, EXAMINE, UID FETCH.
        with _counted(session, 1 if flavour == "full" else 4):
            uid = writer.append(
                "Sent",
                raw,
                flags=["\\Seen", "$Label1", "\\Recent"],
                internal_date=when,
                internet_message_id="append@mailsync.test",
                content_sha256=_sha(raw),
            )
    with user.client() as client:
        assert client.uids("Sent") == [1, uid]
        assert client.fetch_raw("Sent", uid) == raw
        assert client.flags("Sent", uid) == {"\\Seen", "$Label1"}
        assert client.internal_date("Sent", uid) == when


@BOTH
def test_append_into_the_selected_folder_without_message_id(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    # LF line ends: the server stores CRLF, and the copy must still be recognised.
    raw = make_message(subject="no id", message_id=None).replace(b"\r\n", b"\n")
    with user.client() as client:
        first = client.append("INBOX", make_message())
        twin = client.append("INBOX", raw)  # an identical older message is not the new one
    with _session(user) as session:
        writer = session
        writer.set_seen("INBOX", first, True)
        # basic: STATUS, APPEND, UID FETCH (Message-IDs), UID FETCH (bodies); no re-EXAMINE
        # since INBOX is selected and Dovecot announces the new message with the APPEND.
        with _counted(session, 1 if flavour == "full" else 4):
            uid = writer.append(
                "INBOX", raw, flags=[], internal_date=None, internet_message_id=None, content_sha256=None
            )
        assert uid > twin
        # The folder is still selected read-write.
        with _counted(session, 1):
            assert writer.set_seen("INBOX", uid, True) == ("\\Seen",)
    with user.client() as client:
        assert client.fetch_raw("INBOX", uid) == raw.replace(b"\n", b"\r\n")


@BOTH
def test_append_to_a_missing_folder_raises_folder_gone(request: pytest.FixtureRequest, flavour: str) -> None:
    with _session(_user(request, flavour)) as session, pytest.raises(FolderMissing):
        session.append(
            "No-Such-Folder",
            make_message(),
            flags=[],
            internal_date=None,
            internet_message_id=None,
            content_sha256=None,
        )


@BOTH
def test_find_by_message_id_is_exact(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        exact = client.append("Archive", make_message(message_id="<abc@mailsync.test>"))
        client.append("Archive", make_message(message_id="<xabc@mailsync.test.example>"))
        client.append("Archive", make_message(message_id="<ABC@mailsync.test>"))
        client.append("Archive", make_message(message_id=None, extra_headers={"References": "<abc@mailsync.test>"}))
        again = client.append("Archive", make_message(message_id="<abc@mailsync.test>"))
    with _session(user) as session:
        writer = session
        with _counted(session, 3):  # EXAMINE, UID SEARCH, UID FETCH
            assert writer.find_by_internet_message_id("Archive", "abc@mailsync.test") == [exact, again]
        with _counted(session, 2):  # no second EXAMINE
            assert writer.find_by_internet_message_id("Archive", " <abc@mailsync.test> ") == [exact, again]
        assert writer.find_by_internet_message_id("Archive", "bc@mailsync.test") == []
        assert writer.find_by_internet_message_id("Archive", "") == []
        with pytest.raises(FolderMissing):
            writer.find_by_internet_message_id("No-Such-Folder", "abc@mailsync.test")


@BOTH
def test_checking_find_by_message_id_first_makes_append_idempotent(
    request: pytest.FixtureRequest, flavour: str
) -> None:
    user = _user(request, flavour)
    raw = make_message(subject="outbox", message_id="<once@mailsync.test>")

    def store_sent(writer: ImapConnection) -> int:
        # What the caller does: link to a copy that is there already, else append one.
        found = writer.find_by_internet_message_id("Sent", "once@mailsync.test")
        if found:
            return found[0]
        return writer.append(
            "Sent",
            raw,
            flags=["\\Seen"],
            internal_date=None,
            internet_message_id="once@mailsync.test",
            content_sha256=_sha(raw),
        )

    with _session(user) as session:
        first = store_sent(session)
    with _session(user) as session:  # a new invocation, as after a crash
        assert store_sent(session) == first
    assert list(_snapshot(user, "Sent")) == [first]


@BOTH
def test_find_by_content(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    raw = make_message(message_id=None, date=dt.datetime(2024, 5, 6, tzinfo=dt.UTC))
    with user.client() as client:
        one = client.append("Junk", raw)
        client.append("Junk", make_message(message_id=None))
        two = client.append("Junk", raw)
    with _session(user) as session:
        writer = session
        assert writer.find_by_content("Junk", _sha(raw)) == [one, two]
        assert writer.find_by_content("Junk", _sha(raw).upper(), since_uid=one + 1) == [two]
        assert writer.find_by_content("Junk", _sha(raw), since_uid=two + 1) == []
        assert writer.find_by_content("Junk", _sha(b"something else")) == []


# -- sharing the connection with the reader -------------------------------------------------


@BOTH
def test_writer_works_after_the_reader_used_the_connection(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    raw = make_message(subject="moved after a sync")
    with user.client() as client:
        read = client.append("INBOX", make_message(subject="read"))
        moved = client.append("INBOX", raw)
    with _session(user) as session:
        reader = session
        writer = session
        status = reader.status(["INBOX"])["INBOX"]
        if flavour == "full":
            assert status.highestmodseq is not None
            # ENABLEs QRESYNC and leaves INBOX selected read-only.
            reader.changes_since("INBOX", status.uidvalidity, status.highestmodseq)
        else:
            reader.examine("INBOX")
        # The read-only selection must be replaced: SELECT, UID STORE.
        with _counted(session, 2):
            assert writer.set_seen("INBOX", read, True) == ("\\Seen",)
        new_uid = writer.move("INBOX", moved, "Archive", internet_message_id=None, content_sha256=_sha(raw))
        assert new_uid is not None
        if flavour == "full":
            # The writer consumed the VANISHED responses of its MOVE; the reader still learns
            # of the expunge from the server.
            changes = reader.changes_since("INBOX", status.uidvalidity, status.highestmodseq)
            assert changes.vanished == [moved]
            assert changes.changed_flags == {read: ("\\Seen",)}
        else:
            reader.examine("INBOX")
            assert reader.search_from_uid(1) == [read]
            assert reader.flags([read]) == {read: ("\\Seen",)}
        # The reader's EXAMINE replaced the writer's selection again.
        with _counted(session, 2):
            assert writer.set_seen("INBOX", read, False) == ()
    assert _snapshot(user, "Archive")[new_uid][0] == raw


@BOTH
def test_writer_notices_another_folder_selected_read_write_behind_its_back(
    request: pytest.FixtureRequest, flavour: str
) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        inbox_uid = client.append("INBOX", make_message(subject="inbox"))
        archive_uid = client.append("Archive", make_message(subject="archive"))
    assert inbox_uid == archive_uid  # so a STORE in the wrong folder would hit a message
    with _session(user) as session:
        writer = session
        writer.set_seen("INBOX", inbox_uid, True)
        session.client.select_folder("Archive")  # other code on the same connection
        with _counted(session, 2):  # SELECT INBOX again, UID STORE
            assert writer.set_seen("INBOX", inbox_uid, False) == ()
    with user.client() as client:
        assert client.flags("INBOX", inbox_uid) == set()
        assert client.flags("Archive", archive_uid) == set()


@pytest.mark.parametrize(
    ("use_move", "use_uidplus"),
    [(True, False), (False, True), (False, False)],
    ids=["move-only", "uidplus-only", "neither"],
)
def test_move_paths_for_servers_with_only_some_extensions(
    mail_user: MailUser, use_move: bool, use_uidplus: bool
) -> None:
    # The full server has both; a client may always use less than advertised, which covers the
    # combinations neither Dovecot flavour offers.
    raw = make_message(subject="partial extensions")
    with mail_user.client() as client:
        client.append("Archive", make_message(subject="old"))
        uid = client.append("INBOX", raw)
        trashed = client.append("INBOX", make_message(subject="trash"))
        client.add_flags("INBOX", trashed, ["\\Deleted"])
    ignored = [name for name, used in (("MOVE", use_move), ("UIDPLUS", use_uidplus)) if not used]
    with _session(mail_user, ignore_capabilities=ignored) as session:
        assert (session.has_move, session.has_uidplus) == (use_move, use_uidplus)
        writer = session
        new_uid = writer.move("INBOX", uid, "Archive", internet_message_id=None, content_sha256=_sha(raw))
        assert new_uid == 2
        assert writer.move("INBOX", uid, "Archive", internet_message_id=None, content_sha256=_sha(raw)) is None
    assert _snapshot(mail_user, "Archive")[2][0] == raw
    inbox = _snapshot(mail_user, "INBOX")
    assert list(inbox) == [trashed] and "\\Deleted" in inbox[trashed][1]


# -- refusals: typed errors, and Courier's read-only APPEND ----------------------------------


class RefusingProxy:
    """A plain-text line proxy in front of Dovecot's imap port that answers NO where another
    server would, for refusals Dovecot never gives: Courier-IMAP's "NO Current box is selected
    READ-ONLY." to an APPEND into the mailbox the session has EXAMINEd (``courier=True``), and a
    NO to every APPEND into the folders in ``refuse_append`` (an over-quota or read-only
    mailbox). Everything else is the real server's answer."""

    COURIER_NO = b"NO Current box is selected READ-ONLY."

    def __init__(self, user: MailUser, *, courier: bool = False, refuse_append: dict[str, bytes] | None = None):
        import socket
        import threading

        self._socket_mod = socket
        self.user = user
        self.courier = courier
        self.refuse_append = {k.upper(): v for k, v in (refuse_append or {}).items()}
        self.refused: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def close(self) -> None:
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _serve(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = self._socket_mod.create_connection((self.user.host, self.user.imap_port), timeout=10)
            lock = threading.Lock()
            for target in (self._client_to_server, self._server_to_client):
                thread = threading.Thread(target=target, args=(client, server, lock), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _server_to_client(self, client, server, lock) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                with lock:
                    client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(self._socket_mod.SHUT_RDWR)

    def _client_to_server(self, client, server, lock) -> None:
        reader = client.makefile("rb")
        examined: bytes | None = None
        try:
            while line := reader.readline(1_000_000):
                words = line.split(maxsplit=3)
                verb = words[1].upper() if len(words) > 1 else b""
                mailbox = words[2].strip(b'"').upper() if len(words) > 2 else b""
                if verb == b"EXAMINE":
                    examined = mailbox
                elif verb in (b"SELECT", b"UNSELECT", b"CLOSE"):
                    examined = None
                elif verb == b"APPEND":
                    answer = self.refuse_append.get(mailbox.decode())
                    if answer is None and self.courier and examined == mailbox:
                        answer = self.COURIER_NO
                    if answer is not None:
                        # Refused before the "+" continuation: the literal is never sent.
                        self.refused.append(mailbox)
                        with lock:
                            client.sendall(words[0] + b" " + answer + b"\r\n")
                        continue
                server.sendall(line)
                literal = re.search(rb"\{(\d+)\}\r\n$", line)
                if literal:
                    server.sendall(reader.read(int(literal.group(1))))
        except OSError:
            pass
        with contextlib.suppress(OSError):
            server.shutdown(self._socket_mod.SHUT_RDWR)


@contextlib.contextmanager
def _proxied_session(user: MailUser, proxy: RefusingProxy):
    params = ServerParams(
        host="127.0.0.1", port=proxy.port, username=user.username, password=user.password, security="none"
    )
    settings = Settings(allow_private_hosts=True, allow_insecure=True)
    with open_imap(params, settings) as session:
        yield session


@BOTH
def test_append_after_find_leaves_the_read_only_selection_courier_refuses(
    request: pytest.FixtureRequest, flavour: str
) -> None:
    """Issue 9 finding 3: the pusher looks for the message in Sent (EXAMINE) and then APPENDs
    into Sent on the same selection; Courier answers NO, which used to fail the account."""
    user = _user(request, flavour)
    raw = make_message(subject="to Sent", message_id="<courier@mailsync.test>")
    proxy = RefusingProxy(user, courier=True)
    try:
        with _proxied_session(user, proxy) as session:
            writer = session
            assert writer.find_by_internet_message_id("Sent", "courier@mailsync.test") == []
            uid = writer.append(
                "Sent",
                raw,
                flags=["\\Seen"],
                internal_date=None,
                internet_message_id="courier@mailsync.test",
                content_sha256=None,
            )
            # The session goes on as usual afterwards: the copy is found and can be changed.
            assert writer.find_by_internet_message_id("Sent", "courier@mailsync.test") == [uid]
            assert writer.set_seen("Sent", uid, False) == ()
    finally:
        proxy.close()
    assert proxy.refused == []
    assert [r for r, _ in _snapshot(user, "Sent").values()] == [raw]


@BOTH
def test_append_into_a_read_write_selection_stays_selected(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        first = client.append("INBOX", make_message())
    proxy = RefusingProxy(user, courier=True)
    try:
        with _proxied_session(user, proxy) as session:
            writer = session
            writer.set_seen("INBOX", first, True)
            before = session.command_count
            writer.append(
                "Archive", make_message(), flags=[], internal_date=None, internet_message_id=None, content_sha256=None
            )
            # No UNSELECT/CLOSE: full: APPEND. basic: STATUS, APPEND, EXAMINE, UID FETCH of the
            # Message-IDs, UID FETCH of the bodies (matched by content).
            assert session.command_count - before == (1 if flavour == "full" else 5)
    finally:
        proxy.close()


@BOTH
def test_a_refused_append_is_operation_refused_with_the_servers_words(
    request: pytest.FixtureRequest, flavour: str
) -> None:
    user = _user(request, flavour)
    proxy = RefusingProxy(user, refuse_append={"Sent": b"NO [OVERQUOTA] Quota exceeded (mailbox for user is full)"})
    try:
        with _proxied_session(user, proxy) as session:
            writer = session
            with pytest.raises(OperationRefused) as excinfo:
                writer.append(
                    "Sent", make_message(), flags=[], internal_date=None, internet_message_id=None, content_sha256=None
                )
            assert not isinstance(excinfo.value, FolderMissing)
            assert "Quota exceeded" in excinfo.value.message
            # The connection is fine: the next command works.
            assert writer.find_by_internet_message_id("Sent", "nothing@mailsync.test") == []
    finally:
        proxy.close()


@BOTH
def test_a_missing_folder_is_folder_missing_not_a_network_failure(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        uid = client.append("INBOX", make_message())
    with _session(user) as session:
        writer = session
        for action in (
            lambda: writer.set_seen("Gone", 1, True),
            lambda: writer.move("INBOX", uid, "Gone", internet_message_id=None, content_sha256=None),
            lambda: writer.append(
                "Gone", make_message(), flags=[], internal_date=None, internet_message_id=None, content_sha256=None
            ),
            lambda: writer.find_by_internet_message_id("Gone", "x@mailsync.test"),
        ):
            with pytest.raises(FolderMissing) as excinfo:
                action()
            assert not isinstance(excinfo.value, ConnectFailed)
            assert excinfo.value.code == "folder_missing"


@BOTH
def test_a_bad_to_a_command_is_operation_refused(request: pytest.FixtureRequest, flavour: str) -> None:
    user = _user(request, flavour)
    with user.client() as client:
        uid = client.append("INBOX", make_message())
    with _session(user) as session:
        writer = session
        # UID 0 is not a valid UID: Dovecot answers BAD, which imaplib raises.
        with pytest.raises(OperationRefused) as excinfo:
            writer.set_seen("INBOX", 0, True)
        assert "BAD" in excinfo.value.message
        assert writer.set_seen("INBOX", uid, True) == ("\\Seen",)
