"""The reader's parsing of Gmail's FETCH attributes (X-GM-MSGID, X-GM-THRID, X-GM-LABELS).

The responses are Google's documented examples ("IMAP Extensions", developers.google.com/gmail/
imap/imap-extensions), as a UID FETCH returns them (with the UID the reader keys them by), run
through the same parser the connection uses (``connection._parse_fetch``, imapclient's).
"""

from __future__ import annotations

import pytest

from mailsync.mailbox import connection, gmail
from mailsync.mailbox.imap import mailbox_arg


def fetched(*lines: bytes | tuple[bytes, bytes]) -> dict[int, dict[bytes, object]]:
    return connection._parse_fetch(list(lines))


def test_google_x_gm_msgid_example_is_the_message_identity() -> None:
    # Given Google's example "* 1 FETCH (X-GM-MSGID 1278455344230334865)"
    found = fetched(b"1 (X-GM-MSGID 1278455344230334865 UID 1)", b"2 (X-GM-MSGID 1278455344230334866 UID 2)")
    # When parsed
    parsed = {uid: gmail.parse_attributes(attrs) for uid, attrs in found.items()}
    # Then each message has its 64-bit id; no thread or labels were asked for
    assert parsed[1] == gmail.GmailAttributes(msgid=1278455344230334865, thrid=None, labels=())
    assert parsed[2] is not None and parsed[2].msgid == 1278455344230334866


def test_google_x_gm_thrid_example_groups_messages_into_threads() -> None:
    found = fetched(
        b"1 (X-GM-MSGID 1278455344230334865 X-GM-THRID 1278455344230334865 UID 1)",
        b"2 (X-GM-MSGID 1266894439832287888 X-GM-THRID 1266894439832287888 UID 2)",
        b"3 (X-GM-MSGID 1266894474713787900 X-GM-THRID 1266894439832287888 UID 3)",
    )
    threads = {uid: gmail.parse_attributes(attrs).thrid for uid, attrs in found.items()}  # type: ignore[union-attr]
    assert threads == {1: 1278455344230334865, 2: 1266894439832287888, 3: 1266894439832287888}


def test_google_x_gm_labels_examples_system_quoted_plain_and_empty() -> None:
    # Given Google's four X-GM-LABELS examples
    found = fetched(
        b'1 (X-GM-MSGID 11 X-GM-LABELS (\\Inbox \\Sent Important "Muy Importante") UID 1)',
        b"2 (X-GM-MSGID 12 X-GM-LABELS (foo) UID 2)",
        b"3 (X-GM-MSGID 13 X-GM-LABELS () UID 3)",
        b"4 (X-GM-MSGID 14 X-GM-LABELS (\\Drafts) UID 4)",
    )
    labels = {uid: gmail.parse_attributes(attrs).labels for uid, attrs in found.items()}  # type: ignore[union-attr]
    # Then system labels keep their backslash, a quoted label its space, and none is none
    assert labels == {
        1: ("\\Inbox", "\\Sent", "Important", "Muy Importante"),
        2: ("foo",),
        3: (),
        4: ("\\Drafts",),
    }


def test_google_store_plus_x_gm_labels_example_response() -> None:
    # Given the FETCH Gmail answers "STORE 1 +X-GM-LABELS (foo)" with
    found = fetched(b'1 (X-GM-LABELS (\\Inbox \\Sent Important "Muy Importante" foo) X-GM-MSGID 11 UID 1)')
    assert gmail.parse_attributes(found[1]).labels[-1] == "foo"  # type: ignore[union-attr]


def test_labels_in_modified_utf7_nested_and_as_literals_are_decoded() -> None:
    # Given labels as Gmail sends non-ASCII and nested names: modified UTF-7, one as a literal
    found = fetched(
        (b'1 (UID 1 X-GM-MSGID 21 X-GM-LABELS ("Kunden/M&APw-ller" &AMk-t&AOk- {12}', b"Vertr&AOQ-ge"),
        b"))",
    )
    # Then they read as the folder names the user sees
    assert gmail.parse_attributes(found[1]).labels == ("Kunden/Müller", "Été", "Verträge")  # type: ignore[union-attr]


def test_an_all_digit_label_stays_a_label() -> None:
    found = fetched(b"1 (UID 1 X-GM-MSGID 31 X-GM-LABELS (2024 \\Starred))")
    assert gmail.parse_attributes(found[1]).labels == ("2024", "\\Starred")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    [None, 0, -5, 2**64, b"12x", "abc", True],
)
def test_without_a_usable_x_gm_msgid_the_message_is_recognised_as_on_any_server(value: object) -> None:
    assert gmail.parse_attributes({b"X-GM-MSGID": value, b"X-GM-THRID": 5}) is None


def test_a_hostile_label_list_is_bounded() -> None:
    labels = gmail.parse_labels((*(b"l%d" % i for i in range(gmail.MAX_LABELS + 50)), b"x" * 5000))
    assert len(labels) == gmail.MAX_LABELS
    assert gmail.parse_labels((b"x" * (gmail.MAX_LABEL_BYTES + 1), b"ok")) == ("ok",)


def test_label_arguments_system_labels_as_atoms_others_quoted_in_modified_utf7() -> None:
    assert gmail.label_arg("\\Inbox") == "\\Inbox"
    assert gmail.label_arg("Muy Importante") == '"Muy Importante"'
    assert gmail.label_arg("Kunden/Müller") == mailbox_arg("Kunden/Müller") == '"Kunden/M&APw-ller"'
    # A label with a quote or backslash cannot break out of its string
    assert gmail.label_arg('a"b\\') == '"a\\"b\\\\"'


@pytest.mark.parametrize(
    ("folder", "special_use", "label"),
    [
        ("INBOX", None, "\\Inbox"),
        ("inbox", None, "\\Inbox"),
        ("[Gmail]/Sent Mail", "\\Sent", "\\Sent"),
        ("[Google Mail]/Gesendet", "\\Sent", "\\Sent"),
        ("[Gmail]/Drafts", "\\Drafts", "\\Draft"),
        ("[Gmail]/Starred", "\\Flagged", "\\Starred"),
        ("[Gmail]/Trash", "\\Trash", "\\Trash"),
        ("Clients/ACME", None, "Clients/ACME"),
    ],
)
def test_the_label_that_puts_a_message_into_a_folder(folder: str, special_use: str | None, label: str) -> None:
    assert gmail.label_for(folder, special_use) == label


def test_only_a_server_advertising_x_gm_ext_1_is_read_the_gmail_way() -> None:
    # Google's CAPABILITY example, and a server without the extension
    google = [
        "IMAP4rev1",
        "UNSELECT",
        "LITERAL+",
        "IDLE",
        "NAMESPACE",
        "QUOTA",
        "ID",
        "XLIST",
        "CHILDREN",
        "X-GM-EXT-1",
    ]
    gmail_conn = connection.ImapConnection.__new__(connection.ImapConnection)
    gmail_conn._capabilities = sorted(google)
    other = connection.ImapConnection.__new__(connection.ImapConnection)
    other._capabilities = ["IMAP4rev1", "MOVE", "CONDSTORE", "X-GM-EXT-2"]
    assert gmail_conn.is_gmail and not other.is_gmail
    assert "X-GM-MSGID X-GM-THRID X-GM-LABELS" in connection._GMAIL_SUMMARY_ITEMS
    assert connection._GMAIL_SUMMARY_ITEMS.startswith(connection._SUMMARY_ITEMS[:-1])


class RecordingImap:
    """The commands a Gmail session would carry, answered as Google's examples answer them."""

    def __init__(self, by_folder: dict[str, dict[int, int]]) -> None:
        self.by_folder = by_folder  # folder -> uid -> X-GM-MSGID
        self.folder = ""
        self.commands: list[str] = []

    def connection(self) -> connection.ImapConnection:
        conn = connection.ImapConnection.__new__(connection.ImapConnection)
        conn._capabilities = ["IMAP4rev1", "X-GM-EXT-1", "MOVE", "UIDPLUS"]
        conn._params = connection.ServerParams("imap.gmail.com", 993, "a@gmail.com", "", "ssl")
        conn._writing = False
        conn._client = type("Client", (), {"_imap": self})()
        conn._examine = lambda folder, parameters: self._open("EXAMINE", folder)  # type: ignore[method-assign]
        conn._select = lambda folder, writable: self._open("SELECT", folder)  # type: ignore[method-assign]
        conn._uid_search = self.search  # type: ignore[method-assign]
        conn._uid_fetch = self.fetch  # type: ignore[method-assign]
        return conn

    def _open(self, verb: str, folder: str) -> None:
        self.commands.append(f"{verb} {folder}")
        self.folder = folder

    def search(self, criteria: str, charset: str | None = None) -> list[int]:
        self.commands.append(f"UID SEARCH {criteria}")
        wanted = {int(m) for m in criteria.split() if m.isdigit()}
        return sorted(uid for uid, msgid in self.by_folder.get(self.folder, {}).items() if msgid in wanted)

    def fetch(self, uids: list[int], items: str) -> dict[int, dict[bytes, object]]:
        self.commands.append(f"UID FETCH {','.join(map(str, uids))} {items}")
        lines = [
            f"{i} (UID {uid} X-GM-MSGID {self.by_folder[self.folder][uid]})".encode()
            for i, uid in enumerate(uids, 1)
            if uid in self.by_folder.get(self.folder, {})
        ]
        return connection._parse_fetch(lines)

    def _simple_command(self, *args: str) -> tuple[str, list[bytes]]:
        self.commands.append(" ".join(args))
        return "OK", [b"STORE (Success)"]


def test_gmail_locate_searches_by_x_gm_msgid_and_maps_each_to_its_uid() -> None:
    imap = RecordingImap({"Clients": {40: 1278455344230334865, 41: 7, 42: 1266894439832287888}})
    found = imap.connection().gmail_locate("Clients", [1278455344230334865, 1266894439832287888, 99])
    assert found == {1278455344230334865: 40, 1266894439832287888: 42}
    assert imap.commands == [
        "EXAMINE Clients",
        "UID SEARCH OR OR X-GM-MSGID 99 X-GM-MSGID 1266894439832287888 X-GM-MSGID 1278455344230334865",
        "UID FETCH 40,42 (UID X-GM-MSGID)",
    ]
    assert imap.connection().gmail_locate("Clients", []) == {}


def test_gmail_add_label_stores_the_targets_label_and_finds_the_new_copy_there() -> None:
    imap = RecordingImap({"[Gmail]/All Mail": {900: 11}, "INBOX": {3: 11}, "Kunden/Müller": {8: 11}})
    conn = imap.connection()
    assert conn.gmail_add_label("[Gmail]/All Mail", 900, "INBOX") == 3
    assert imap.commands[:3] == [
        "SELECT [Gmail]/All Mail",
        "UID FETCH 900 (UID X-GM-MSGID)",
        "UID STORE 900 +X-GM-LABELS.SILENT (\\Inbox)",
    ]
    imap.commands.clear()
    assert conn.gmail_add_label("[Gmail]/All Mail", 900, "Kunden/Müller") == 8
    assert imap.commands[2] == 'UID STORE 900 +X-GM-LABELS.SILENT ("Kunden/M&APw-ller")'
    # A message no longer in the source folder: nothing is stored
    imap.commands.clear()
    assert conn.gmail_add_label("[Gmail]/All Mail", 901, "INBOX") is None
    assert not any("STORE" in c for c in imap.commands)
