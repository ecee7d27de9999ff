"""Folder suggestions and folder-map validation: pure rules, plain data."""

from __future__ import annotations

import pytest

from mailsync.errors import ValidationFailed
from mailsync.folders import check_folders_exist, suggest, suggested_map, validate_map_shape
from mailsync.mailbox.base import ServerFolder


def folder(name: str, special: str | None = None, delimiter: str = "/", flags: tuple[str, ...] = ()) -> ServerFolder:
    return ServerFolder(
        name=name, delimiter=delimiter, flags=flags + ((special,) if special else ()), special_use=special
    )


def test_special_use_wins_over_names() -> None:
    folders = [folder("INBOX"), folder("Sent"), folder("Verzonden items", "\\Sent")]
    result = suggest(folders)
    assert result == {"INBOX": "inbox", "Sent": None, "Verzonden items": "sent"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Sent Items", "sent"),
        ("Verzonden items", "sent"),
        ("Verzonden berichten", "sent"),
        ("Gesendete Elemente", "sent"),
        ("Éléments envoyés", "sent"),
        ("Elementos enviados", "sent"),
        ("[Gmail]/Sent Mail", "sent"),
        ("INBOX.Sent", "sent"),
        ("Entwürfe", "drafts"),
        ("Concepten", "drafts"),
        ("Brouillons", "drafts"),
        ("Deleted Items", "trash"),
        ("Prullenbak", "trash"),
        ("Papierkorb", "trash"),
        ("Papelera", "trash"),
        ("Archief", "archive"),
        ("Junk", None),
        ("[Gmail]/All Mail", None),
        ("Klanten", None),
    ],
)
def test_well_known_names(name: str, expected: str | None) -> None:
    delimiter = "." if name.startswith("INBOX.") else "/"
    folders = [folder("INBOX", delimiter=delimiter), folder(name, delimiter=delimiter)]
    assert suggest(folders)[name] == expected


def test_each_crm_folder_suggested_once_top_level_first() -> None:
    folders = [folder("INBOX"), folder("Archive/Sent"), folder("Sent"), folder("Sent Items")]
    result = suggest(folders)
    assert [n for n, crm in result.items() if crm == "sent"] == ["Sent"]


def test_noselect_folder_not_suggested() -> None:
    folders = [folder("INBOX"), folder("[Gmail]", flags=("\\Noselect",)), folder("[Gmail]/Sent Mail", "\\Sent")]
    assert suggested_map(folders) == {"inbox": "INBOX", "sent": "[Gmail]/Sent Mail"}


def test_valid_map_is_returned_clean() -> None:
    assert validate_map_shape({"inbox": "INBOX", "sent": "Sent", "klanten_2024": "Klanten"}) == {
        "inbox": "INBOX",
        "sent": "Sent",
        "klanten_2024": "Klanten",
    }


@pytest.mark.parametrize(
    ("folder_map", "field"),
    [
        ({"sent": "Sent"}, "inbox"),
        ({}, "inbox"),
        ({"inbox": "INBOX", "Sent": "Sent"}, "Sent"),
        ({"inbox": "INBOX", "x" * 41: "Sent"}, "x" * 41),
        ({"inbox": "INBOX", "sent": ""}, "sent"),
        ({"inbox": "INBOX", "sent": 7}, "sent"),
        ({"inbox": "INBOX", "sent": "INBOX"}, "sent"),
    ],
)
def test_invalid_maps_name_the_field(folder_map: dict, field: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        validate_map_shape(folder_map)
    assert err.value.field == field


def test_missing_server_folder_is_named() -> None:
    folders = [folder("INBOX"), folder("Sent")]
    check_folders_exist({"inbox": "inbox", "sent": "Sent"}, folders)
    with pytest.raises(ValidationFailed) as err:
        check_folders_exist({"inbox": "INBOX", "trash": "Papierkorb"}, folders)
    assert err.value.field == "trash"
    assert "Papierkorb" in err.value.message


def test_noselect_folder_cannot_be_mapped() -> None:
    folders = [folder("INBOX"), folder("[Gmail]", flags=("\\Noselect",))]
    with pytest.raises(ValidationFailed):
        check_folders_exist({"inbox": "INBOX", "archive": "[Gmail]"}, folders)


# --- provider presets: Gmail and Microsoft folder names, localized -------------------------------


def gmail_folders(root: str, names: dict[str, str | None]) -> list[ServerFolder]:
    """A Gmail listing: INBOX, the root (\\Noselect) and the system folders, each with its flag."""
    return [
        folder("INBOX"),
        folder(root, flags=("\\Noselect", "\\HasChildren")),
        *(folder(f"{root}/{name}", special) for name, special in names.items()),
    ]


@pytest.mark.parametrize(
    ("root", "names", "expected"),
    [
        (
            "[Gmail]",
            {
                "Sent Mail": "\\Sent",
                "Trash": "\\Trash",
                "Drafts": "\\Drafts",
                "All Mail": "\\All",
                "Important": "\\Important",
                "Starred": "\\Flagged",
                "Spam": "\\Junk",
            },
            {"inbox": "INBOX", "sent": "[Gmail]/Sent Mail", "trash": "[Gmail]/Trash", "drafts": "[Gmail]/Drafts"},
        ),
        (
            "[Google Mail]",
            {
                "Gesendet": "\\Sent",
                "Papierkorb": "\\Trash",
                "Entwürfe": "\\Drafts",
                "Alle Nachrichten": "\\All",
                "Wichtig": "\\Important",
                "Markiert": "\\Flagged",
                "Spam": "\\Junk",
            },
            {
                "inbox": "INBOX",
                "sent": "[Google Mail]/Gesendet",
                "trash": "[Google Mail]/Papierkorb",
                "drafts": "[Google Mail]/Entwürfe",
            },
        ),
        (
            "[Gmail]",
            {
                "Verzonden berichten": "\\Sent",
                "Prullenbak": "\\Trash",
                "Concepten": "\\Drafts",
                "Alle berichten": "\\All",
                "Belangrijk": "\\Important",
                "Met ster": "\\Flagged",
            },
            {
                "inbox": "INBOX",
                "sent": "[Gmail]/Verzonden berichten",
                "trash": "[Gmail]/Prullenbak",
                "drafts": "[Gmail]/Concepten",
            },
        ),
    ],
    ids=["english", "german-google-mail", "dutch"],
)
@pytest.mark.parametrize("special_use", [True, False], ids=["special-use", "names-only"])
def test_gmail_system_folders_suggested_never_all_mail_important_starred(
    root: str, names: dict[str, str | None], expected: dict[str, str], special_use: bool
) -> None:
    # Given Gmail's listing (with SPECIAL-USE, or an old server answering without it)
    folders = gmail_folders(root, names)
    if not special_use:
        folders = [folder(f.name, flags=tuple(x for x in f.flags if x == "\\Noselect")) for f in folders]
    # When suggested for Gmail
    result = suggested_map(folders, provider="google")
    # Then sent, trash and drafts are Gmail's (by name too, in the account's language)
    if special_use:
        assert result == expected
    else:
        assert {k: v for k, v in result.items() if k in expected} == expected


@pytest.mark.parametrize("flag", ["\\All", "\\Important", "\\Flagged", "\\Junk"])
def test_all_mail_important_starred_junk_are_never_suggested_even_by_a_matching_name(flag: str) -> None:
    # Given a folder whose name would match (a localized "Archive") but which is All Mail & co.
    folders = [folder("INBOX"), folder("[Gmail]/Archiv", flag)]
    # Then nothing is suggested for it
    assert suggest(folders, provider="google")["[Gmail]/Archiv"] is None


def test_on_gmail_the_system_folder_beats_a_top_level_label_of_the_same_name() -> None:
    # Given a user label "Sent" next to Gmail's system folder, on a listing without SPECIAL-USE
    folders = [folder("INBOX"), folder("Sent"), folder("[Gmail]/Sent Mail")]
    # Then Gmail's own Sent Mail is suggested there, the top-level one elsewhere
    assert suggested_map(folders, provider="google")["sent"] == "[Gmail]/Sent Mail"
    assert suggested_map(folders)["sent"] == "Sent"


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (
            ("Sent Items", "Deleted Items", "Drafts", "Archive", "Junk Email"),
            {"sent": "Sent Items", "trash": "Deleted Items", "drafts": "Drafts", "archive": "Archive"},
        ),
        (
            ("Verzonden items", "Verwijderde items", "Concepten", "Archief", "Ongewenste e-mail"),
            {"sent": "Verzonden items", "trash": "Verwijderde items", "drafts": "Concepten", "archive": "Archief"},
        ),
        (
            ("Gesendete Elemente", "Gelöschte Elemente", "Entwürfe", "Archiv", "Junk-E-Mail"),
            {"sent": "Gesendete Elemente", "trash": "Gelöschte Elemente", "drafts": "Entwürfe", "archive": "Archiv"},
        ),
        (
            ("Éléments envoyés", "Éléments supprimés", "Brouillons", "Archive", "Courrier indésirable"),
            {"sent": "Éléments envoyés", "trash": "Éléments supprimés", "drafts": "Brouillons", "archive": "Archive"},
        ),
        (
            ("Posta inviata", "Posta eliminata", "Bozze", "Archivio", "Posta indesiderata"),
            {"sent": "Posta inviata", "trash": "Posta eliminata", "drafts": "Bozze"},
        ),
    ],
    ids=["english", "dutch", "german", "french", "italian"],
)
def test_microsoft_folders_by_name_in_the_mailbox_language(names: tuple[str, ...], expected: dict[str, str]) -> None:
    # Given Outlook's folders without SPECIAL-USE (Exchange Online lists few of them)
    folders = [folder("INBOX"), *(folder(n) for n in names)]
    # Then each is suggested for its CRM folder, junk for none
    assert suggested_map(folders, provider="microsoft") == {"inbox": "INBOX", **expected}


def test_presets_and_provider_for_host() -> None:
    from mailsync.providers import PRESETS, provider_for_host

    assert (PRESETS["google"].imap_host, PRESETS["google"].imap_port) == ("imap.gmail.com", 993)
    assert (PRESETS["microsoft"].imap_host, PRESETS["microsoft"].imap_port) == ("outlook.office365.com", 993)
    assert "https://mail.google.com/" in PRESETS["google"].scopes
    assert {"offline_access", "https://outlook.office.com/IMAP.AccessAsUser.All"} <= set(PRESETS["microsoft"].scopes)
    assert provider_for_host("IMAP.Gmail.com.") == "google"
    assert provider_for_host("outlook.office365.com") == "microsoft"
    assert provider_for_host("imap.example.com") is None
