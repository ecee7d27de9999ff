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
