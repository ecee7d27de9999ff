"""Gmail's labels carried out (``planner.gmail`` decides): used by the engine and the pusher only
when the server advertises ``X-GM-EXT-1``; every other server never reaches this module.

What the engine asks of it:

- ``match_key``/``new_id``/``thread_of``: a Gmail message is recognised by its X-GM-MSGID and
  its CRM id derives from it, so each of its label copies finds the same CRM message;
- ``known_copies``: arrivals of messages the CRM already has (a label added) are recorded as
  further copies, or become the primary copy when their folder ranks higher (rule 1);
- ``rehome``: a primary copy that disappeared (its label removed) hands the message to the
  best copy still in a mapped folder (rule 3), found on the server by X-GM-MSGID.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from mailsync import dal
from mailsync.domain import Message
from mailsync.errors import FolderMissing
from mailsync.mailbox.connection import ImapConnection, MessageSummary
from mailsync.sync.planner import gmail as rules
from mailsync.sync.planner.messages import Arrival, Known, Relink

if TYPE_CHECKING:
    from mailsync.sync.engine import AccountSync

# Unmapped folders searched for a message whose label left every mapped folder: on Gmail every
# message that still exists is in one of these (found: ``moved_unmapped``, else ``removed``).
_WHERE_EVERYTHING_IS = ("\\All", "\\Trash", "\\Junk")


def special_folders(conn: ImapConnection) -> dict[str, str]:
    """SPECIAL-USE flag -> folder name, from one LIST."""
    return {f.special_use: f.name for f in conn.list_folders() if f.special_use is not None}


def move_method(conn: ImapConnection, source: str, target: str) -> tuple[rules.MoveMethod, str | None]:
    """How the pusher moves a message from ``source`` to ``target`` on Gmail (rule 4), and the
    target's SPECIAL-USE flag (its system label). One LIST."""
    special = special_folders(conn)
    by_name = {name: flag for flag, name in special.items()}
    method = rules.crm_move(source, target, all_mail=special.get("\\All"), trash=special.get("\\Trash"))
    return method, by_name.get(target)


class GmailLabels:
    """The Gmail part of one sync run (``AccountSync``)."""

    def __init__(self, sync: AccountSync) -> None:
        self.sync = sync
        self._special: dict[str, str] | None = None
        self._threads: dict[tuple[str, int], int] = {}

    def _special_folders(self) -> dict[str, str]:
        if self._special is None:
            self._special = special_folders(self.sync.conn)
        return self._special

    def _all_mail(self) -> str | None:
        return self._special_folders().get("\\All")

    # -- identity ------------------------------------------------------------------------------

    def match_key(self, server_folder: str, summary: MessageSummary) -> str | None:
        """The arrival's match key by X-GM-MSGID (None: recognise it as on any server)."""
        if summary.gmail is None:
            return None
        if summary.gmail.thrid is not None:
            self._threads[(server_folder, summary.uid)] = summary.gmail.thrid
        return rules.match_key(summary.gmail.msgid)

    def new_id(self, arrival: Arrival, default: str) -> str:
        msgid = rules.msgid_of(arrival.match_key)
        return default if msgid is None else rules.message_id(self.sync.tenant, self.sync.user, msgid)

    def thread_of(self, message: Message) -> Message:
        """A new message's thread is Gmail's conversation (X-GM-THRID) when Gmail said it."""
        thrid = self._threads.get((message.server_folder or "", message.uid or 0))
        return message if thrid is None else replace(message, thread_id=rules.thread_id(thrid))

    # -- rule 1: a label added ------------------------------------------------------------------

    def known_copies(self, arrivals: list[Arrival]) -> tuple[list[Arrival], dict[str, list[str]]]:
        """Arrivals of messages the CRM already shows are taken care of here (recorded as a
        further copy, or made the primary copy); returned: the other arrivals, and the detached
        messages they may revive (match key -> id) for ``plan_batch``.

        An arrival whose message also disappeared in this sync is left to ``plan_batch``: that
        is a label moved, matched like a move on any server.
        """
        waiting = {k.match_key for k in self.sync.vanished}
        ids: dict[Arrival, str] = {}
        for arrival in arrivals:
            msgid = rules.msgid_of(arrival.match_key)
            if msgid is not None and arrival.match_key not in waiting:
                ids[arrival] = rules.message_id(self.sync.tenant, self.sync.user, msgid)
        if not ids:
            return arrivals, {}
        messages = dal.find_messages(set(ids.values()))
        rest: list[Arrival] = []
        revive: dict[str, list[str]] = {}
        for arrival in arrivals:
            message = messages.get(ids.get(arrival, ""))
            if message is None:
                rest.append(arrival)
            elif message.state != "synced" or message.server_folder is None:
                revive.setdefault(arrival.match_key, []).append(message.id)
                rest.append(arrival)
            else:
                self._further_copy(arrival, message)
        return rest, revive

    def _further_copy(self, arrival: Arrival, message: Message) -> None:
        assert message.server_folder is not None
        primary = rules.Copy(message.server_folder, self.sync.crm_for.get(message.server_folder, message.folder))
        new = rules.Copy(arrival.server_folder, self.sync.crm_for[arrival.server_folder])
        decision = rules.on_new_copy(primary, new, all_mail=self._all_mail())
        if decision is rules.NewCopy.BECOMES_PRIMARY:
            # The old primary copy stays recorded: it is now a further copy.
            self.sync._relink(Relink(arrival, message.id, None))
        else:
            dal.relink(message, self.sync._location(arrival, message.id), {"updated_at": dal.utcnow()}, None)

    # -- rule 3: the primary copy's label removed ----------------------------------------------

    def rehome(self, vanished: Iterable[Known]) -> tuple[list[Known], set[str]]:
        """Relink each message whose primary copy disappeared to its best copy left in a mapped
        folder; returns the disappearances still to handle as on any server, and the match keys
        of those Gmail still has elsewhere (``moved_unmapped``)."""
        vanished = list(vanished)
        gm = [k for k in vanished if rules.msgid_of(k.match_key) is not None]
        if not gm:
            return vanished, set()
        messages = dal.find_messages({k.id for k in gm})
        primaries = {
            k
            for k in gm
            if (m := messages.get(k.id)) is not None
            and m.state == "synced"
            and (m.server_folder, m.uidvalidity, m.uid) == (k.server_folder, k.uidvalidity, k.uid)
        }
        if not primaries:
            return vanished, set()
        msgids = sorted({rules.msgid_of(k.match_key) or 0 for k in primaries})
        special = self._special_folders()
        mapped = list(self.sync.crm_for)
        elsewhere = [special[f] for f in _WHERE_EVERYTHING_IS if f in special and special[f] not in self.sync.crm_for]
        found: dict[int, list[tuple[str, int]]] = {}
        for folder in [*mapped, *elsewhere]:
            try:
                hits = self.sync.conn.gmail_locate(folder, msgids)
            except FolderMissing:
                continue
            for msgid, uid in hits.items():
                found.setdefault(msgid, []).append((folder, uid))
        rest: list[Known] = []
        moved_away: set[str] = set()
        for known in vanished:
            if known not in primaries:
                rest.append(known)
                continue
            hits = found.get(rules.msgid_of(known.match_key) or 0, [])
            copies = {
                folder: uid
                for folder, uid in hits
                if folder in self.sync.crm_for and folder != known.server_folder and folder in self.sync.snapshots
            }
            best = rules.on_primary_gone(
                (rules.Copy(f, self.sync.crm_for[f]) for f in copies), all_mail=special.get("\\All")
            )
            if best is None:
                if hits:
                    moved_away.add(known.match_key)
                rest.append(known)
                continue
            arrival = Arrival(
                server_folder=best.server_folder,
                uidvalidity=self.sync.snapshots[best.server_folder].uidvalidity,
                uid=copies[best.server_folder],
                flags=known.flags,
                internal_date=known.internal_date,
                size=0,
                match_key=known.match_key,
            )
            self.sync._relink(Relink(arrival, known.id, known))
        return rest, moved_away
