"""The cost of a sync that finds nothing new, for a small and a large mailbox.

An account with 5 mapped folders (INBOX, Sent, Drafts, Trash, Archive), each holding N messages
on the server (default N = 200 and N = 20,000; ``--small``: 200 and 2,000). To keep the first
sync affordable only the newest ``--in-window`` messages of each folder (default 200) are inside
the 30-day window; the rest are older, so both accounts sync the same number of messages while
the server-side mailbox differs a hundredfold. After the first sync, ``--noops`` no-op syncs are
run and counted:

- IMAP commands: the session's counter (``outcome.imap_commands``) and, on the wire, tagged
  command lines seen by a loopback TCP proxy in front of Dovecot's plain IMAP port (the account
  uses ``security: none`` through the proxy so that the commands are readable; the commands are
  the same under TLS);
- AWS calls by service and operation (boto3 clients and PynamoDB alike, see
  ``benchlib.count_aws_calls``), under ``moto.mock_aws`` in-process;
- wall time of the no-op ``run_job`` (in-process moto: AWS latency not included).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from email.utils import format_datetime
from pathlib import Path

import benchlib
from benchlib import print_table, write_results

from devstack.dovecot import DovecotServer

FOLDERS = {"inbox": "INBOX", "sent": "Sent", "drafts": "Drafts", "trash": "Trash", "archive": "Archive"}
_TAGGED = re.compile(rb"^([A-Za-z0-9]+) ([A-Za-z]+)(?: ([A-Za-z]+))?")


class CountingProxy:
    """A loopback TCP proxy that counts the client's tagged IMAP command lines and bytes."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.commands: Counter[str] = Counter()
        self.bytes_up = 0
        self.bytes_down = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self.lock:
            self.commands = Counter()
            self.bytes_up = self.bytes_down = 0

    def _accept(self) -> None:
        self.listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.target, timeout=30)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        pending = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                with self.lock:
                    if upstream:
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
                if upstream:
                    pending += data
                    *lines, pending = pending.split(b"\r\n")
                    for line in lines:
                        match = _TAGGED.match(line)
                        if match:
                            verb = match.group(2).upper().decode()
                            if verb == "UID" and match.group(3):
                                verb += " " + match.group(3).upper().decode()
                            with self.lock:
                                self.commands[verb] += 1
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(timeout=5)


def _raw(subject: str, when: dt.datetime, message_id: str) -> bytes:
    """A small plain-text message, formatted directly (100,000 of them through email.message is slow)."""
    body = f"{subject}: nothing new here.\r\n" * 8
    return (
        "From: Alice Example <alice@example.com>\r\nTo: Bench User <bench@example.com>\r\n"
        f"Subject: {subject}\r\nDate: {format_datetime(when)}\r\nMessage-ID: {message_id}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body
    ).encode()


def fill(user, per_folder: int, in_window: int) -> float:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    started = time.perf_counter()
    for f_index, folder in enumerate(FOLDERS.values()):

        def messages(folder=folder, f_index=f_index):
            for i in range(per_folder):
                # The newest in_window messages are 1-20 days old, the rest 40-400 days.
                age = 1 + (i % 20) if i < in_window else 40 + (i % 360)
                when = now - dt.timedelta(days=age, seconds=i % 3600)
                raw = _raw(f"{folder} {i}", when, f"<noop-{f_index}-{i}@bench.mailsync.test>")
                yield raw, when, (["\\Seen"] if i % 3 else [])

        benchlib.append_all(user, folder, messages())
    return time.perf_counter() - started


def measure(server: DovecotServer, per_folder: int, in_window: int, noops: int) -> dict:
    from mailsync.services import sync_jobs

    user = server.add_user()
    fill_seconds = fill(user, per_folder, in_window)
    proxy = CountingProxy(server.imap_port)
    who = f"noop-{per_folder}"
    try:
        settings = {
            "host": "127.0.0.1",
            "port": proxy.port,
            "username": user.username,
            "password": user.password,
            "security": "none",
        }
        benchlib.save_account(who, settings, FOLDERS)
        started = time.perf_counter()
        first = benchlib.run_until_synced(who)
        first_seconds = time.perf_counter() - started
        if first["status"] != "synced":
            raise RuntimeError(f"first sync ended {first}")
        samples = []
        for _ in range(noops):
            proxy.reset()
            with benchlib.count_aws_calls() as calls:
                t0 = time.perf_counter()
                result = sync_jobs.run_job(sync_jobs.SyncJob(tenant_id=benchlib.TENANT, user_id=who, reason="user"))
                seconds = time.perf_counter() - t0
            time.sleep(0.2)  # let the proxy threads see the LOGOUT exchange close
            if result.status != "synced" or result.outcome is None or result.outcome.created:
                raise RuntimeError(f"no-op sync ended {result.status} {result.outcome}")
            with proxy.lock:
                wire = dict(proxy.commands)
                up, down = proxy.bytes_up, proxy.bytes_down
            samples.append(
                {
                    "seconds": seconds,
                    "imap_commands_session": result.outcome.imap_commands,
                    "imap_commands_wire": sum(wire.values()),
                    "wire_commands": dict(sorted(wire.items())),
                    "bytes_up": up,
                    "bytes_down": down,
                    "aws_calls": dict(sorted(calls.items())),
                    "aws_by_service": benchlib.by_service(calls),
                }
            )
    finally:
        proxy.close()
    last = samples[-1]
    return {
        "messages_per_folder_on_server": per_folder,
        "messages_on_server": per_folder * len(FOLDERS),
        "in_window_per_folder": min(in_window, per_folder),
        "synced_by_first_sync": first["created"],
        "fill_seconds": fill_seconds,
        "first_sync_seconds": first_seconds,
        "first_sync_imap_commands": first["imap_commands"],
        "noop_median_seconds": statistics.median(s["seconds"] for s in samples),
        "noop_samples_identical": all(
            (s["imap_commands_wire"], s["aws_calls"]) == (last["imap_commands_wire"], last["aws_calls"])
            for s in samples
        ),
        "noop": last,
        "noop_samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="200 and 2,000 per folder, 20 in the window")
    parser.add_argument("--sizes", help="messages per folder, comma-separated (default 200,20000)")
    parser.add_argument("--in-window", type=int, help="messages per folder inside the window (default 200)")
    parser.add_argument("--noops", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("200,2000" if args.small else "200,20000")).split(",")]
    in_window = args.in_window or (20 if args.small else 200)

    for key, value in benchlib.aws_env().items():
        os.environ[key] = value
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    from moto import mock_aws

    from devstack.provision import provision_mock

    tmp = Path(tempfile.mkdtemp(prefix="mailsync-bench-noop-"))
    results = []
    try:
        with DovecotServer(tmp / "dovecot") as server, mock_aws():
            os.environ.update(provision_mock())
            os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
            os.environ["MAILSYNC_ALLOW_PRIVATE_HOSTS"] = "true"
            os.environ["MAILSYNC_ALLOW_INSECURE"] = "true"
            os.environ["MAILSYNC_EXTRA_CA_FILE"] = str(server.ca_file)
            benchlib.reset_caches()
            for per_folder in sizes:
                print(f"{len(FOLDERS)} folders x {per_folder:,} messages ...", flush=True)
                results.append(measure(server, per_folder, in_window, args.noops))
                r = results[-1]
                print(
                    f"  filled in {r['fill_seconds']:.1f} s; first sync {r['synced_by_first_sync']} messages "
                    f"in {r['first_sync_seconds']:.1f} s",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\nNo-op sync (after the first sync), {len(FOLDERS)} mapped folders; only {in_window} messages per folder "
        "are within the 30-day window, the rest are older (what varies is the server-side mailbox size):"
    )
    rows = []
    for r in results:
        n = r["noop"]
        rows.append(
            [
                r["messages_on_server"],
                r["synced_by_first_sync"],
                n["imap_commands_session"],
                n["imap_commands_wire"],
                n["bytes_up"] + n["bytes_down"],
                n["aws_by_service"].get("dynamodb", 0),
                n["aws_by_service"].get("s3", 0),
                sum(n["aws_by_service"].values()),
                r["noop_median_seconds"] * 1000,
            ]
        )
    print_table(
        [
            "on server",
            "synced",
            "IMAP cmds (session)",
            "IMAP cmds (wire)",
            "wire bytes",
            "DynamoDB",
            "S3",
            "all AWS",
            "median ms",
        ],
        rows,
    )
    for r in results:
        n = r["noop"]
        wire = ", ".join(f"{k} {v}" for k, v in n["wire_commands"].items())
        aws = ", ".join(f"{k} {v}" for k, v in n["aws_calls"].items())
        print(f"  {r['messages_on_server']:>7,}: wire: {wire}")
        print(f"           AWS: {aws}")
    write_results(
        "bench_noop_sync",
        {
            "folders": list(FOLDERS.values()),
            "messages_per_folder": sizes,
            "in_window_per_folder": in_window,
            "noops": args.noops,
            "small": args.small,
            "aws": "moto.mock_aws in-process",
            "transport": "plain IMAP through a counting loopback proxy (security: none)",
        },
        results,
    )


if __name__ == "__main__":
    main()
