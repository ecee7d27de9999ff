"""Pure folder-map rules: suggesting CRM folders for server folders and validating a map."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

from mailsync.errors import ValidationFailed
from mailsync.mailbox.base import ServerFolder

CRM_FOLDER_PATTERN = r"^[a-z0-9_-]{1,40}$"
_CRM_FOLDER_RE = re.compile(CRM_FOLDER_PATTERN)

# Junk and \All (Gmail's All Mail) are deliberately not suggested: spam does not belong in
# dossiers and All Mail would mirror every other folder a second time.
_SPECIAL_USE_TO_CRM = {"\\Sent": "sent", "\\Drafts": "drafts", "\\Trash": "trash", "\\Archive": "archive"}
# Never a default, whatever the folder is called: Gmail's All Mail, Important and Starred hold
# copies of mail that lives in other folders too (a second copy in the CRM), and Junk is spam.
_NEVER_SUGGESTED_FLAGS = frozenset({"\\All", "\\Important", "\\Flagged", "\\Junk"})
# Gmail's system folders live under this root ("[Google Mail]" in Germany and the UK of old).
_GMAIL_ROOTS = ("[gmail]", "[google mail]")

# Well-known display names (compared case- and accent-insensitively on the last path
# segment) in English, Dutch, German, French and Spanish, plus Gmail/Outlook forms.
_WELL_KNOWN: dict[str, tuple[str, ...]] = {
    "sent": (
        "sent",
        "sent items",
        "sent mail",
        "sent messages",
        "sent-mail",
        "verzonden",
        "verzonden items",
        "verzonden berichten",
        "gesendet",
        "gesendete elemente",
        "gesendete objekte",
        "gesendete nachrichten",
        "envoyes",
        "elements envoyes",
        "messages envoyes",
        "enviados",
        "elementos enviados",
        "mensajes enviados",
        "correo enviado",
        "messaggi inviati",
        "posta inviata",
    ),
    "drafts": (
        "drafts",
        "draft",
        "concepten",
        "concept",
        "entwurfe",
        "entwuerfe",
        "brouillons",
        "borradores",
        "bozze",
    ),
    "trash": (
        "trash",
        "deleted items",
        "deleted messages",
        "bin",
        "prullenbak",
        "verwijderde items",
        "verwijderde berichten",
        "papierkorb",
        "geloschte elemente",
        "geloschte objekte",
        "corbeille",
        "elements supprimes",
        "papelera",
        "elementos eliminados",
        "cestino",
        "posta eliminata",
    ),
    "archive": ("archive", "archives", "archief", "archiv", "archivo", "archivos"),
}
_NAME_TO_CRM = {name: crm for crm, names in _WELL_KNOWN.items() for name in names}


def _normalise(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def _last_segment(folder: ServerFolder) -> str:
    if folder.delimiter and folder.delimiter in folder.name:
        return folder.name.rsplit(folder.delimiter, 1)[1]
    return folder.name


def _gmail_system(folder: ServerFolder) -> bool:
    root = folder.name.split(folder.delimiter, 1)[0] if folder.delimiter else folder.name
    return _normalise(root) in _GMAIL_ROOTS


def _never_suggested(folder: ServerFolder) -> bool:
    return bool(_NEVER_SUGGESTED_FLAGS.intersection(folder.flags)) or folder.special_use in _NEVER_SUGGESTED_FLAGS


def suggest(folders: Iterable[ServerFolder], provider: str | None = None) -> dict[str, str | None]:
    """Suggested CRM folder per server folder name (None for no suggestion).

    SPECIAL-USE wins over names; each CRM folder is suggested for one server folder only;
    among name matches, a top-level folder beats a nested one, except on Gmail (``provider``
    ``google``), where the system folders under ``[Gmail]`` beat labels of the same name. All
    Mail, Important, Starred and Junk are never suggested.
    """
    folders = list(folders)
    result: dict[str, str | None] = {f.name: None for f in folders}
    taken: set[str] = set()

    def assign(folder: ServerFolder, crm: str) -> None:
        if crm not in taken and result[folder.name] is None:
            result[folder.name] = crm
            taken.add(crm)

    for folder in folders:
        if folder.name.upper() == "INBOX":
            assign(folder, "inbox")
    for folder in folders:
        crm = _SPECIAL_USE_TO_CRM.get(folder.special_use or "")
        if crm and "\\Noselect" not in folder.flags and not _never_suggested(folder):
            assign(folder, crm)

    def order(f: ServerFolder) -> tuple[bool, bool, str]:
        system_first = provider == "google" and not _gmail_system(f)
        return (system_first, f.delimiter is not None and f.delimiter in f.name, f.name)

    for folder in sorted(folders, key=order):
        if "\\Noselect" in folder.flags or "\\NonExistent" in folder.flags or _never_suggested(folder):
            continue
        crm = _NAME_TO_CRM.get(_normalise(_last_segment(folder)))
        if crm:
            assign(folder, crm)
    return result


def suggested_map(folders: Iterable[ServerFolder], provider: str | None = None) -> dict[str, str]:
    """The folder map a user would get by accepting every suggestion."""
    return {crm: name for name, crm in suggest(folders, provider).items() if crm}


def validate_map_shape(folder_map: Mapping[str, str]) -> dict[str, str]:
    """Check keys and values without asking the server; returns a clean copy."""
    if not isinstance(folder_map, Mapping) or not folder_map:
        raise ValidationFailed("The folder map must be an object of CRM folder to server folder", field="inbox")
    seen: dict[str, str] = {}
    clean: dict[str, str] = {}
    for crm, server in folder_map.items():
        if not isinstance(crm, str) or not _CRM_FOLDER_RE.match(crm):
            raise ValidationFailed(
                f"CRM folder '{crm}' is not valid: use 1-40 characters a-z, 0-9, '_' or '-'", field=str(crm)
            )
        if not isinstance(server, str) or not server.strip():
            raise ValidationFailed(f"Server folder for '{crm}' must be a non-empty string", field=crm)
        if server in seen:
            raise ValidationFailed(
                f"Server folder '{server}' is mapped twice ('{seen[server]}' and '{crm}')", field=crm
            )
        seen[server] = crm
        clean[crm] = server
    if "inbox" not in clean:
        raise ValidationFailed("The folder map must map 'inbox'", field="inbox")
    return clean


def check_folders_exist(folder_map: Mapping[str, str], folders: Iterable[ServerFolder]) -> None:
    """Every mapped server folder must exist and be selectable on the server."""
    selectable = {f.name for f in folders if "\\Noselect" not in f.flags and "\\NonExistent" not in f.flags}
    upper = {n.upper() for n in selectable if n.upper() == "INBOX"}
    for crm, server in folder_map.items():
        if server in selectable or (server.upper() == "INBOX" and upper):
            continue
        raise ValidationFailed(f"Server folder '{server}' does not exist on the mail server", field=crm)
