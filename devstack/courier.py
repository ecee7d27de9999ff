"""Throwaway Courier-IMAP 5.0 servers for the compatibility tests, next to Dovecot and Cyrus.

Debian's courier-imap conflicts with dovecot-imapd, so ``devstack/install_servers.sh`` unpacks it
into a cache directory; Courier's authentication library (courier-authlib, with its userdb
module) is installed normally. Courier reads its configuration and password database from the
compiled-in /etc/courier and talks to authdaemond over /run/courier/authdaemon, so each server
runs in its own mount namespace (``unshare``) with its private directories bind-mounted over
those paths, and in its own PID namespace so that stopping it leaves no process behind.

Folders follow Courier's default namespace: ``INBOX.Sent``, ``INBOX.Trash``, ... with "." as the
separator, and no SPECIAL-USE. Needs root (mount namespaces, and authdaemond runs as root).
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import secrets
import shlex
import signal
import subprocess
from pathlib import Path

from devstack.cyrus import (
    HOST,
    ServerError,
    ServerNotInstalled,
    UnpackedImapServer,
    chown_tree,
    free_port,
    install_script,
    library_path,
    reachable_state_dir,
    wait_for_greeting,
)
from devstack.dovecot import MailUser, _write_tls_material, make_message

__all__ = ["COURIER_FOLDERS", "CourierServer"]

COURIER_FOLDERS = {
    "inbox": "INBOX",
    "sent": "INBOX.Sent",
    "drafts": "INBOX.Drafts",
    "trash": "INBOX.Trash",
    "archive": "INBOX.Archive",
}
_SUBFOLDERS = ("Sent", "Drafts", "Trash", "Archive", "Junk")
_START_ATTEMPTS = 3
# The mail store belongs to the courier user: couriertcpd drops to it before imaplogin runs,
# so imapd cannot switch to any other uid after login.
_MAIL_USER = "courier"
AUTHDAEMOND = Path("/usr/lib/courier/courier-authlib/authdaemond")
MAKEUSERDB = Path("/usr/sbin/makeuserdb")

# Debian's /etc/courier/imapd defaults, minus what only matters for a system-wide install.
_IMAP_CAPABILITY = "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE"
_IMAPD_ENV = {
    "PATH": "/usr/bin:/bin",
    "IMAP_CAPABILITY": _IMAP_CAPABILITY,
    "IMAP_CAPABILITY_TLS": f"{_IMAP_CAPABILITY} AUTH=PLAIN",
    "IMAP_KEYWORDS": "1",
    "IMAP_ACL": "1",
    "IMAP_IDLE_TIMEOUT": "60",
    "IMAP_MAILBOX_SANITY_CHECK": "1",
    "IMAP_DISABLETHREADSORT": "0",
    "IMAP_CHECK_ALL_FOLDERS": "0",
    "IMAP_OBSOLETE_CLIENT": "0",
    "IMAP_UMASK": "022",
    "IMAP_USELOCKS": "1",
    "IMAP_ENHANCEDIDLE": "0",
    "IMAP_TRASHFOLDERNAME": "Trash",
    "IMAP_EMPTYTRASH": "Trash:7",
    "IMAP_MOVE_EXPUNGE_TO_TRASH": "0",
    "IMAP_TLS_REQUIRED": "0",
    "TLS_CERTFILE": "/etc/courier/imapd.pem",
    "TLS_VERIFYPEER": "NONE",
}


def _password_hash(password: str) -> str:
    # authlib accepts {SHA256}<base64>; no crypt(3) needed.
    return "{SHA256}" + base64.b64encode(hashlib.sha256(password.encode()).digest()).decode()


class CourierServer(UnpackedImapServer):
    """One Courier-IMAP instance on 127.0.0.1: implicit TLS (imaps) and STARTTLS (imap) ports."""

    folders = COURIER_FOLDERS
    name = "courier"
    _log_name = "courier.log"
    # unshare --fork ignores SIGTERM, and the namespace's PID 1 ignores it too; SIGKILL of
    # PID 1 takes down the whole namespace.
    _stop_signal = signal.SIGKILL

    # -- lifecycle ----------------------------------------------------------

    def _check_installed(self) -> None:
        needed = [
            self.root / "usr/bin/imapd",
            self.root / "usr/bin/couriertls",
            self.root / "usr/sbin/couriertcpd",
            self.root / "usr/lib/courier/courier/imaplogin",
            AUTHDAEMOND,
            MAKEUSERDB,
        ]
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise ServerNotInstalled(f"missing {', '.join(missing)}; run {install_script()}")
        if not Path("/etc/courier").is_dir():
            raise ServerNotInstalled(f"/etc/courier (a mount point) is missing; run {install_script()}")
        if os.geteuid() != 0:
            raise ServerNotInstalled("Courier-IMAP runs only as root here (mount namespaces, authdaemond)")
        try:
            pwd.getpwnam(_MAIL_USER)
        except KeyError as exc:
            raise ServerNotInstalled(f"no {_MAIL_USER!r} user; run {install_script()}") from exc

    def _start(self) -> None:
        self.base_dir = reachable_state_dir("mailsync-courier-", None)
        etc = self.base_dir / "etc"
        etc.mkdir()
        (self.base_dir / "run" / "authdaemon").mkdir(parents=True)
        (self.base_dir / "home").mkdir()
        self.ca_file, cert_file, key_file = _write_tls_material(self.base_dir / "tls")
        pem = etc / "imapd.pem"
        pem.touch(mode=0o600)
        pem.write_bytes(key_file.read_bytes() + cert_file.read_bytes())
        # couriertls runs as the courier user.
        chown_tree(etc, _MAIL_USER)
        os.chown(etc, 0, 0)
        (etc / "authdaemonrc").write_text(
            'authmodulelist="authuserdb"\n'
            "daemons=2\n"
            "authdaemonvar=/run/courier/authdaemon\n"
            "DEBUG_LOGIN=0\n"
            'DEFAULTOPTIONS=""\n'
        )
        userdb = etc / "userdb"
        userdb.touch(mode=0o600)
        self._make_userdb()
        # A mount point for the private run directory; /run is a tmpfs, nothing else uses it.
        Path("/run/courier").mkdir(exist_ok=True)
        for _attempt in range(_START_ATTEMPTS):
            self.imap_port, self.imaps_port = free_port(), free_port()
            if self._launch():
                return
        raise ServerError(f"courier did not start after {_START_ATTEMPTS} attempts\n{self.log_tail()}")

    def _mounts(self) -> str:
        assert self.base_dir is not None
        return (
            f"mount --bind {shlex.quote(str(self.base_dir / 'etc'))} /etc/courier\n"
            f"mount --bind {shlex.quote(str(self.base_dir / 'run'))} /run/courier\n"
        )

    def _launch(self) -> bool:
        assert self.base_dir is not None
        root = self.root
        env = {**_IMAPD_ENV, "LD_LIBRARY_PATH": library_path(root), "COURIERTLS": str(root / "usr/bin/couriertls")}
        env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
        tcpd = (
            f"env -i {env_args} {{tls}} {root}/usr/sbin/couriertcpd -address={HOST} -nodnslookup -noidentlookup"
            f" -maxprocs=100 -maxperip=100 -user={_MAIL_USER}"
        )
        login = f"{root}/usr/lib/courier/courier/imaplogin {root}/usr/bin/imapd Maildir"
        script = self.base_dir / "start.sh"
        # The shell stays PID 1 of the new PID namespace: when unshare dies, the kernel kills it
        # (--kill-child) and with it every process of the namespace, whatever uid they run as.
        script.write_text(
            "#!/bin/sh\nset -e\n"
            + self._mounts()
            + f"LD_LIBRARY_PATH={shlex.quote(library_path(root))} {AUTHDAEMOND} &\n"
            + tcpd.format(tls="IMAP_STARTTLS=YES")
            + f" {self.imap_port} {login} &\n"
            + tcpd.format(tls="IMAP_TLS=1")
            + f" {self.imaps_port} {root}/usr/bin/couriertls -server -tcpd {login} &\n"
            + "wait\n"
        )
        log = self.log_file.open("ab")
        try:
            self._process = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "/bin/sh",
                    str(script),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        ports = {self.imaps_port: True, self.imap_port: False}
        if not wait_for_greeting(self._process, ports, self.ca_file, signal.SIGKILL):
            self._process = None
            return False
        return True

    # -- users ----------------------------------------------------------------

    def _make_userdb(self) -> None:
        """Rebuild userdb.dat from the userdb text file (makeuserdb knows only /etc/courier)."""
        assert self.base_dir is not None
        result = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "/bin/sh",
                "-c",
                f"mount --bind {shlex.quote(str(self.base_dir / 'etc'))} /etc/courier && exec {MAKEUSERDB}",
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(f"makeuserdb failed: {result.stderr.decode(errors='replace')}")

    def add_user(self, username: str | None = None, password: str | None = None, *, used: bool = False) -> MailUser:
        """Create a user (random name/password by default) with its Maildir folders, subscribed.

        By default every folder stays as it was created, never having held a message (Mailsync
        takes such a folder's ever-new UIDVALIDITY in its stride); ``used=True`` puts one message
        into each folder and deletes it again, as a mailbox some mail program has used.
        """
        if not self.running or self.base_dir is None:
            raise ServerError("start() the server first")
        username = username or f"user{secrets.token_hex(5)}"
        password = password or secrets.token_urlsafe(12)
        if username in self._users or not username.isalnum():
            raise ValueError(f"bad or duplicate user name {username!r}")
        home = self.base_dir / "home" / username
        maildir = home / "Maildir"
        for folder in ["", *(f".{name}" for name in _SUBFOLDERS)]:
            for sub in ("cur", "new", "tmp"):
                (maildir / folder / sub).mkdir(parents=True, mode=0o700)
            if folder:
                # Marks a Maildir++ folder (what maildirmake -f writes).
                (maildir / folder / "maildirfolder").touch()
        chown_tree(home, _MAIL_USER)
        entry = pwd.getpwnam(_MAIL_USER)
        line = (
            f"{username}\tuid={entry.pw_uid}|gid={entry.pw_gid}|home={home}|mail={maildir}"
            f"|systempw={_password_hash(password)}\n"
        )
        with (self.base_dir / "etc" / "userdb").open("a") as userdb:
            userdb.write(line)
        self._make_userdb()
        self._users[username] = password
        user = self.user(username)
        with user.client() as client:
            for name in _SUBFOLDERS:
                client.imap.subscribe_folder(f"INBOX.{name}")
            if used:
                # Courier stores a folder's UIDVALIDITY with its first message: an empty folder
                # that never held mail reports a new one on every STATUS, a second apart.
                marker = make_message(subject="mailsync harness: first use")
                for name in ["INBOX", *(f"INBOX.{n}" for n in _SUBFOLDERS)]:
                    client.expunge(name, client.append(name, marker))
        return user
