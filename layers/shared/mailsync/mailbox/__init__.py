"""Protocol adapters for the user's mail server (IMAP, POP3). They know the protocol and
nothing about storage; every failure leaves them as a ``MailboxError`` with a human message."""

from mailsync.mailbox.base import ConnectionCheck, ServerFolder, ServerParams
from mailsync.mailbox.check import open_mailbox_check

__all__ = ["ConnectionCheck", "ServerFolder", "ServerParams", "open_mailbox_check"]
