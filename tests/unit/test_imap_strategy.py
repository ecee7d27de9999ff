"""The IMAP strategy is chosen once per session from the server's capabilities (no server)."""

from __future__ import annotations

import pytest

from mailsync.mailbox.strategy import ChangeTracking, ExpungeMethod, MoveMethod, NewUidMethod, Strategy

DOVECOT_FULL = [
    "IMAP4rev1", "ENABLE", "CONDSTORE", "QRESYNC", "MOVE", "UIDPLUS", "LIST-STATUS", "SPECIAL-USE", "UNSELECT",
]  # fmt: skip


def test_given_a_full_server_when_chosen_then_every_fast_path() -> None:
    strategy = Strategy.choose(DOVECOT_FULL)
    assert strategy == Strategy(
        move=MoveMethod.MOVE,
        expunge=ExpungeMethod.UID_EXPUNGE,
        new_uid=NewUidMethod.REPORTED,
        changes=ChangeTracking.QRESYNC,
        list_status=True,
        special_use=True,
        unselect=True,
    )


def test_given_a_plain_rfc3501_server_when_chosen_then_every_fallback() -> None:
    strategy = Strategy.choose(["IMAP4rev1", "IDLE", "NAMESPACE"])
    assert strategy == Strategy(
        move=MoveMethod.COPY_THEN_EXPUNGE,
        expunge=ExpungeMethod.EXPUNGE_SPARING_OTHERS,
        new_uid=NewUidMethod.SEARCHED,
        changes=ChangeTracking.NONE,
        list_status=False,
        special_use=False,
        unselect=False,
    )


@pytest.mark.parametrize(
    ("capabilities", "move", "expunge", "new_uid"),
    [
        (["MOVE", "UIDPLUS"], MoveMethod.MOVE, ExpungeMethod.UID_EXPUNGE, NewUidMethod.REPORTED),
        (["MOVE"], MoveMethod.MOVE, ExpungeMethod.EXPUNGE_SPARING_OTHERS, NewUidMethod.SEARCHED),
        (["UIDPLUS"], MoveMethod.COPY_THEN_EXPUNGE, ExpungeMethod.UID_EXPUNGE, NewUidMethod.REPORTED),
        ([], MoveMethod.COPY_THEN_EXPUNGE, ExpungeMethod.EXPUNGE_SPARING_OTHERS, NewUidMethod.SEARCHED),
    ],
    ids=["move+uidplus", "move-only", "uidplus-only", "neither"],
)
def test_given_move_and_uidplus_when_chosen_then_the_move_path_follows_them(
    capabilities: list[str], move: MoveMethod, expunge: ExpungeMethod, new_uid: NewUidMethod
) -> None:
    strategy = Strategy.choose(["IMAP4rev1", *capabilities])
    assert (strategy.move, strategy.expunge, strategy.new_uid) == (move, expunge, new_uid)


@pytest.mark.parametrize(
    ("capabilities", "changes"),
    [
        (["ENABLE", "CONDSTORE", "QRESYNC"], ChangeTracking.QRESYNC),
        # QRESYNC implies CONDSTORE (RFC 7162 3.2), though some servers only list QRESYNC.
        (["ENABLE", "QRESYNC"], ChangeTracking.QRESYNC),
        # QRESYNC has to be ENABLEd; without ENABLE only its CONDSTORE half is usable.
        (["QRESYNC"], ChangeTracking.CONDSTORE),
        (["CONDSTORE"], ChangeTracking.CONDSTORE),
        (["ENABLE"], ChangeTracking.NONE),
    ],
)
def test_given_condstore_and_qresync_when_chosen_then_change_tracking_follows_them(
    capabilities: list[str], changes: ChangeTracking
) -> None:
    assert Strategy.choose(capabilities).changes is changes


def test_given_capabilities_in_any_case_when_chosen_then_they_count() -> None:
    assert Strategy.choose(["move", "UidPlus"]).move is MoveMethod.MOVE
    assert Strategy.choose(["move", "UidPlus"]).new_uid is NewUidMethod.REPORTED


def test_given_ignored_capabilities_when_chosen_then_they_are_never_used() -> None:
    strategy = Strategy.choose(DOVECOT_FULL, ignore=["qresync", "MOVE"])
    assert strategy.changes is ChangeTracking.CONDSTORE
    assert strategy.move is MoveMethod.COPY_THEN_EXPUNGE
    assert strategy.new_uid is NewUidMethod.REPORTED
