"""Throwaway Cyrus IMAP 3.6 servers for the compatibility tests, next to Dovecot.

Debian's cyrus-imapd conflicts with dovecot-imapd, so ``devstack/install_servers.sh`` unpacks it
(and Courier-IMAP) into a cache directory instead of installing it; this module runs Cyrus's
``master`` from there with its own imapd.conf/cyrus.conf, mail spool, SASL password file and TLS
certificate, all in one private state directory. Logins are checked against the sasldb file, so a
wrong password is refused as on a real server. Users get INBOX plus Sent, Drafts, Trash, Archive
and Junk (created and subscribed at first login, with their SPECIAL-USE attributes).

Also the helpers devstack/courier.py shares: where the unpacked servers live, free ports,
readiness polling.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from devstack.dovecot import MailUser, _write_tls_material, stop_process_group

__all__ = [
    "CYRUS_FOLDERS",
    "CyrusServer",
    "ServerNotInstalled",
    "UnpackedImapServer",
    "free_port",
    "install_script",
    "servers_root",
    "wait_for_greeting",
]

HOST = "127.0.0.1"
START_TIMEOUT = 20.0
_START_ATTEMPTS = 3

# Logical folder -> the name a client sees on this server (same as Dovecot's here: altnamespace
# and the "/" separator make Cyrus's folders look like Dovecot's).
CYRUS_FOLDERS = {"inbox": "INBOX", "sent": "Sent", "drafts": "Drafts", "trash": "Trash", "archive": "Archive"}
_SPECIAL_USE = {"Sent": "sent", "Drafts": "drafts", "Trash": "trash", "Archive": "archive", "Junk": "junk"}


class ServerNotInstalled(RuntimeError):
    """The unpacked server binaries are missing (run devstack/install_servers.sh)."""


class ServerError(RuntimeError):
    """A server could not be started or driven."""


def install_script() -> Path:
    return Path(__file__).with_name("install_servers.sh")


def servers_root() -> Path:
    """The directory the Debian packages were unpacked into (``usr/...`` below it)."""
    cache = Path(os.environ.get("MAILSYNC_SERVERS_CACHE", "/var/cache/mailsync-servers"))
    return cache / "root"


def library_path(root: Path) -> str:
    return f"{root}/usr/lib/x86_64-linux-gnu:{root}/usr/lib"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def greets(port: int, ca_file: Path, *, tls: bool = True) -> bool:
    """Whether the port completes TLS (if asked) and sends an IMAP ``* OK`` greeting."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as raw:
            if not tls:
                return raw.recv(64).startswith(b"* OK")
            context = ssl.create_default_context(cafile=str(ca_file))
            with context.wrap_socket(raw, server_hostname=HOST) as wrapped:
                return wrapped.recv(64).startswith(b"* OK")
    except OSError:
        return False


def wait_for_greeting(
    process: subprocess.Popen[bytes],
    ports: dict[int, bool],
    ca_file: Path,
    stop_signal: int = signal.SIGTERM,
    timeout: float = START_TIMEOUT,
) -> bool:
    """Poll until every port greets (True), or the server died or never greeted (False).

    ``ports`` maps port -> whether it speaks implicit TLS. On False the server is gone: the
    caller tries again with fresh ports (another process may have taken one between
    ``free_port()`` and the server's bind) and reports its log when no attempt works.
    """
    deadline = time.monotonic() + timeout
    pending = dict(ports)
    while pending:
        if process.poll() is not None:
            return False
        pending = {port: tls for port, tls in pending.items() if not greets(port, ca_file, tls=tls)}
        if not pending:
            break
        if time.monotonic() > deadline:
            stop_process_group(process, stop_signal)
            return False
        # Readiness polling inside the launcher, not test synchronisation.
        time.sleep(0.05)
    return True


def reachable_state_dir(prefix: str, owner: str | None) -> Path:
    """A fresh state directory the server's unprivileged user can enter.

    pytest's temp directories are 0700 and owned by root, so a server that drops privileges
    could not read its own config there.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    if owner is not None and os.geteuid() == 0:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def chown_tree(path: Path, owner: str) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(owner)
    for dirpath, _dirs, files in os.walk(path):
        os.chown(dirpath, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(Path(dirpath) / name, entry.pw_uid, entry.pw_gid)


class UnpackedImapServer:
    """What the Cyrus and Courier servers share: one instance on 127.0.0.1 with implicit TLS
    (imaps) and STARTTLS (imap) ports, its state in ``base_dir``, its users in ``_users``.

    Use as a context manager, or ``start()``/``stop()``. ``add_user()`` creates a mailbox user.
    Subclasses give ``name``, ``folders``, ``_log_name``, ``_check_installed()`` and ``_start()``.
    """

    folders: dict[str, str]
    name: str
    _log_name: str
    # The signal that stops the server's process group (SIGKILL follows after a while anyway).
    _stop_signal: int = signal.SIGTERM

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or servers_root()
        self.host = HOST
        self._users: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self.base_dir: Path | None = None
        self.imap_port = 0
        self.imaps_port = 0
        self.ca_file = Path()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / self._log_name

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except (FileNotFoundError, AssertionError):
            return f"(no {self.name} log)"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _check_installed(self) -> None:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._check_installed()
        try:
            self._start()
        except BaseException:
            # No half-started server and no state directory left behind.
            self.stop()
            raise

    def stop(self) -> None:
        if self._process is not None:
            stop_process_group(self._process, self._stop_signal)
            self._process = None
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def user(self, username: str) -> MailUser:
        return MailUser(
            username=username,
            password=self._users[username],
            host=self.host,
            imap_port=self.imap_port,
            imaps_port=self.imaps_port,
            pop3_port=0,
            pop3s_port=0,
            ca_file=self.ca_file,
        )


class CyrusServer(UnpackedImapServer):
    """One Cyrus IMAP instance on 127.0.0.1: implicit TLS (imaps) and STARTTLS (imap) ports.

    Use as a context manager, or ``start()``/``stop()``. ``add_user()`` creates a mailbox user.
    """

    folders = CYRUS_FOLDERS
    name = "cyrus"
    _log_name = "master.log"

    def __init__(self, root: Path | None = None) -> None:
        super().__init__(root)
        self.master = self.root / "usr/lib/cyrus/bin/master"
        self.servername = "mailsync-cyrus"

    @property
    def unix_user(self) -> str:
        # As root, master drops privileges to the compiled-in "cyrus" user; otherwise it must
        # be told to stay the user it runs as.
        return "cyrus" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    # -- lifecycle ----------------------------------------------------------

    def _check_installed(self) -> None:
        if not self.master.exists():
            raise ServerNotInstalled(f"{self.master} is missing; run {install_script()}")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("cyrus")
            except KeyError as exc:
                raise ServerNotInstalled(f"no 'cyrus' user; run {install_script()}") from exc

    def _start(self) -> None:
        self.base_dir = reachable_state_dir("mailsync-cyrus-", self.unix_user)
        tls_dir = self.base_dir / "tls"
        self.ca_file, cert_file, key_file = _write_tls_material(tls_dir)
        config = self.base_dir / "config"
        for sub in ("db", "proc", "socket", "lock", "log", "msg", "quota", "user", "sieve", "ptclient"):
            (config / sub).mkdir(parents=True)
        (self.base_dir / "spool").mkdir()
        self._write_imapd_conf(cert_file, key_file)
        for _attempt in range(_START_ATTEMPTS):
            self.imap_port, self.imaps_port = free_port(), free_port()
            self._write_cyrus_conf()
            chown_tree(self.base_dir, self.unix_user)
            if self._launch():
                return
        raise ServerError(f"cyrus master did not start after {_START_ATTEMPTS} attempts\n{self.log_tail()}")

    def _env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": library_path(self.root)}

    def _launch(self) -> bool:
        assert self.base_dir is not None
        self._process = subprocess.Popen(
            [
                str(self.master),
                "-C",
                str(self.base_dir / "imapd.conf"),
                "-M",
                str(self.base_dir / "cyrus.conf"),
                "-p",
                str(self.base_dir / "master.pid"),
                "-L",
                str(self.log_file),
            ],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_for_greeting(self._process, {self.imaps_port: True, self.imap_port: False}, self.ca_file):
            self._process = None
            return False
        return True

    # -- configuration --------------------------------------------------------

    def _write_imapd_conf(self, cert_file: Path, key_file: Path) -> None:
        assert self.base_dir is not None
        folders = " | ".join(_SPECIAL_USE)
        xlist = "\n".join(f"xlist-{use}: {name}" for name, use in _SPECIAL_USE.items())
        (self.base_dir / "imapd.conf").write_text(f"""\
# Generated by devstack/cyrus.py for a throwaway test server; do not edit.
configdirectory: {self.base_dir / "config"}
defaultpartition: default
partition-default: {self.base_dir / "spool"}
servername: {self.servername}
cyrus_user: {self.unix_user}
admins: mailsync-admin
# Folders look like Dovecot's: "Sent", not "INBOX.Sent"; "/" as the separator.
unixhierarchysep: yes
altnamespace: yes
# Plain LOGIN without TLS stays possible, so a `security: none` account can be tested.
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {self.base_dir / "sasldb2"}
sasl_mech_list: PLAIN LOGIN
# Tests try wrong passwords on purpose; the default 3 s pause would slow each of them down.
failedloginpause: 0
tls_server_cert: {cert_file}
tls_server_key: {key_file}
# A user's INBOX and folders are created on first login (quota 0 = unlimited).
autocreate_quota: 0
autocreate_inbox_folders: {folders}
autocreate_subscribe_folders: {folders}
{xlist}
""")

    def _write_cyrus_conf(self) -> None:
        assert self.base_dir is not None
        bin_dir = self.root / "usr/lib/cyrus/bin"
        conf = self.base_dir / "imapd.conf"
        (self.base_dir / "cyrus.conf").write_text(f"""\
# Generated by devstack/cyrus.py; services fork per connection (prefork=0).
START {{
  recover cmd="{bin_dir}/ctl_cyrusdb -C {conf} -r"
}}
SERVICES {{
  imap  cmd="{bin_dir}/imapd -C {conf}" listen="{HOST}:{self.imap_port}" prefork=0
  imaps cmd="{bin_dir}/imapd -s -C {conf}" listen="{HOST}:{self.imaps_port}" prefork=0
}}
EVENTS {{
}}
""")

    # -- users ----------------------------------------------------------------

    def add_user(self, username: str | None = None, password: str | None = None) -> MailUser:
        """Create a user (random name/password by default) with its folders, and return it."""
        if not self.running or self.base_dir is None:
            raise ServerError("start() the server first")
        username = username or f"user{secrets.token_hex(5)}"
        password = password or secrets.token_urlsafe(12)
        if username in self._users:
            raise ValueError(f"user {username!r} already exists")
        sasldb = self.base_dir / "sasldb2"
        result = subprocess.run(
            [
                str(self.root / "usr/sbin/saslpasswd2"),
                "-p",
                "-c",
                "-f",
                str(sasldb),
                "-u",
                self.servername,
                username,
            ],
            input=password.encode(),
            capture_output=True,
            env=self._env(),
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(f"saslpasswd2 failed: {result.stderr.decode(errors='replace')}")
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.unix_user)
            os.chown(sasldb, entry.pw_uid, entry.pw_gid)
        self._users[username] = password
        user = self.user(username)
        # The first login creates INBOX and the special-use folders (autocreate).
        with user.client() as client:
            missing = set(_SPECIAL_USE) - set(client.folders())
        if missing:
            raise ServerError(f"cyrus did not autocreate {sorted(missing)}\n{self.log_tail()}")
        return user
