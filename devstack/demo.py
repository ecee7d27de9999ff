"""``make demo``: the local stack plus a throwaway Dovecot with a sample mailbox, and a demo
user whose mail settings and folder map are already saved through the API. Its banner shows
what works for that user; everything it made is removed when it stops."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from devstack.auth import make_token
from devstack.dovecot import DovecotServer, seed_sample_mailbox
from devstack.run import LocalStack, serve_forever, state_dir

DEMO_USER = "demo"
DEMO_TENANT = "demo-office"
# The demo user keeps the default window; the sample mailbox has one message older than it.
SYNC_WINDOW_DAYS = 30


def _call(url: str, token: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback URL we built
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def configure_demo_user(stack: LocalStack, server: DovecotServer, username: str, password: str) -> str:
    """Save the demo mailbox the way a CRM frontend would; returns the user's token."""
    token = make_token(DEMO_USER, DEMO_TENANT, "user")
    base = f"{stack.api_url}/v1/users/me"
    settings = {
        "host": "127.0.0.1",
        "port": server.imaps_port,
        "username": username,
        "password": password,
        "security": "ssl",
        "protocol": "imap",
    }
    status, body = _call(f"{base}/mail-settings", token, "PUT", settings)
    if status not in (200, 201):
        raise RuntimeError(f"saving demo mail settings failed: {status} {body}")
    status, suggestion = _call(f"{base}/folder-map", token)
    if status != 200:
        raise RuntimeError(f"reading the folder suggestion failed: {status} {suggestion}")
    status, body = _call(f"{base}/folder-map", token, "PUT", suggestion["folders"])
    if status != 200:
        raise RuntimeError(f"saving the demo folder map failed: {status} {body}")
    # Sync now rather than at the next scheduler tick, so the demo shows mail at once.
    _call(f"{base}/sync", token, "POST")
    return token


def banner(stack: LocalStack, server: DovecotServer, username: str, password: str, token: str) -> str:
    """What works for the demo user: its token and commands, and why one sample is not shown."""
    auth = '-H "Authorization: Bearer $TOKEN"'
    base = f"{stack.api_url}/v1/users/me"
    return "\n".join(
        [
            "Demo mailbox (Dovecot, throwaway; removed with everything else on Ctrl-C):",
            f"  IMAPS 127.0.0.1:{server.imaps_port}  IMAP+STARTTLS 127.0.0.1:{server.imap_port}",
            f"  user {username}  password {password}  CA {server.ca_file}",
            f"Demo CRM user '{DEMO_USER}' of tenant '{DEMO_TENANT}': mail settings and folder map saved, first sync",
            f"started. Web app: {stack.api_url}/app/ (sign in as {DEMO_USER} of {DEMO_TENANT}). In another shell:",
            f"  export TOKEN={token}",
            *(
                f"  curl -s {base}/{path} {auth}"
                for path in ("mail-settings", "server-folders", "folder-map", "sync-status", "messages")
            ),
            'The sample mailbox holds 4 messages; the CRM shows 2 of them. "Quarterly report" is 40 days old:',
            f"outside the {SYNC_WINDOW_DAYS}-day sync window (sync_window_days), so Mailsync does not sync it (its",
            'reply in Sent it does). The draft lies in "Entwürfe", a folder the suggested map leaves out.',
        ]
    )


def relay_banner(stack: LocalStack, token: str) -> str:
    """The demo user's relay address and a message to send to it (it lands in the CRM inbox)."""
    if stack.smtp is None:
        return ""
    status, body = _call(f"{stack.api_url}/v1/users/me/relay-address", token)
    if status != 200:
        raise RuntimeError(f"reading the demo relay address failed: {status} {body}")
    address = body["address"]
    send = (
        f"import smtplib; smtplib.SMTP('127.0.0.1', {stack.smtp.port}).sendmail('jan@klant.example', "
        f"['{address}'], b'From: jan@klant.example\\r\\nSubject: Relayed to the CRM\\r\\n\\r\\nHello')"
    )
    return "\n".join(
        [
            f"Relay address of '{DEMO_USER}': {address} (local SMTP on 127.0.0.1:{stack.smtp.port}, as SES in AWS).",
            "Send it a message, then list the messages again: it is in the CRM folder inbox at once.",
            f'  .venv/bin/python -c "{send}"',
        ]
    )


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mailsync-demo-"))
    server: DovecotServer | None = None
    stack: LocalStack | None = None
    try:
        server = DovecotServer(workdir / "dovecot").start()
        user = server.add_user("demo@example.test", "demo-password")
        with user.client("ssl") as client:
            seed_sample_mailbox(client)
        # The demo's Dovecot has its own CA; trust it like a deployment trusts a private CA.
        os.environ["MAILSYNC_EXTRA_CA_FILE"] = str(server.ca_file)
        stack = LocalStack(verbose=os.environ.get("MAILSYNC_VERBOSE") == "1", state_dir=state_dir())
        stack.app_login = (DEMO_USER, DEMO_TENANT)
        try:
            stack.start()
            token = configure_demo_user(stack, server, user.username, user.password)
            relay = relay_banner(stack, token)
        except Exception as exc:  # noqa: BLE001 - say why; the finally stops everything
            print(f"demo setup failed: {exc}", file=sys.stderr)
            sys.exit(1)
        text = banner(stack, server, user.username, user.password, token)
        serve_forever(stack, "\n".join(filter(None, [text, relay])), token_hint=False)
    finally:
        if stack is not None:
            stack.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
