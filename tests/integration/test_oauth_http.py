"""The token endpoint's HTTP (``mailsync.oauth``) against servers on loopback: redirects are
never followed (the request's credentials stay with the configured host), only https leaves
the machine, and a trickling server cannot stretch a request past its total deadline."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mailsync import oauth
from mailsync.config import get_settings
from mailsync.providers import Endpoints

TOKENS = {"access_token": "access-1", "expires_in": 3600, "token_type": "Bearer"}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour: str, location: str = "") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour, self.location = behaviour, location
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self.stop = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        body = json.dumps(TOKENS).encode()
        if self.server.behaviour == "redirect":
            self.send_response(302)
            self.send_header("Location", self.server.location + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.server.behaviour in ("trickle-body", "trickle-headers"):
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body) + 1000}\r\n"
            data = (head + "\r\n").encode() + body + b" " * 1000
            if self.server.behaviour == "trickle-body":
                self.wfile.write(data[: len(head) + 2])
                data = data[len(head) + 2 :]
            # One byte a second: every read succeeds well within a per-socket timeout.
            for byte in data:
                if self.server.stop.wait(1):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    do_GET = do_POST = _handle


@pytest.fixture(autouse=True)
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Plain http to the test's servers on loopback, as a developer's local stack allows."""
    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", "true")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _running(server: Server) -> Iterator[Server]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def elsewhere() -> Iterator[Server]:
    yield from _running(Server("answer"))


@pytest.fixture
def redirecting(elsewhere: Server) -> Iterator[Server]:
    yield from _running(Server("redirect", location=elsewhere.url.replace("127.0.0.1", "localhost")))


def _endpoints(base: str) -> Endpoints:
    return Endpoints(
        client_id="client",
        issuer=base,
        authorize_url=f"{base}/authorize",
        token_url=f"{base}/token",
        revoke_url=f"{base}/revoke",
        userinfo_url=f"{base}/userinfo",
        imap_host="127.0.0.1",
        imap_port=993,
    )


def test_the_local_server_answers_when_nothing_is_wrong(elsewhere: Server) -> None:
    tokens = oauth.refresh(_endpoints(elsewhere.url), "secret", "refresh", 5)
    assert tokens.access_token == "access-1" and len(elsewhere.requests) == 1


@pytest.mark.parametrize("call", ["refresh", "exchange_code", "revoke", "userinfo"])
def test_a_redirect_is_not_followed_and_nothing_reaches_its_target(
    redirecting: Server, elsewhere: Server, call: str
) -> None:
    where = _endpoints(redirecting.url)
    calls = {
        "refresh": lambda: oauth.refresh(where, "secret", "refresh", 5),
        "exchange_code": lambda: oauth.exchange_code(where, "secret", "code", "verifier", "https://x.test/cb", 5),
        "revoke": lambda: oauth.revoke(where, "secret", "refresh", 5),
        "userinfo": lambda: oauth.userinfo(where, "access-token", 5),
    }
    with pytest.raises(oauth.TokenEndpointUnavailable, match="302"):
        calls[call]()
    assert len(redirecting.requests) == 1
    assert elsewhere.requests == []


@pytest.mark.parametrize(
    ("url", "private_allowed"),
    [
        ("http://idp.example.com/token", True),  # plain http off the machine: never
        ("http://127.0.0.1:9/token", False),  # loopback over http only where private hosts are allowed
        ("ftp://127.0.0.1/token", True),
    ],
)
def test_token_endpoints_must_be_https(monkeypatch: pytest.MonkeyPatch, url: str, private_allowed: bool) -> None:
    monkeypatch.setenv("MAILSYNC_ALLOW_PRIVATE_HOSTS", "true" if private_allowed else "false")
    get_settings.cache_clear()
    where = _endpoints("https://idp.example.com")
    where = Endpoints(**{**where.__dict__, "token_url": url})
    with pytest.raises(oauth.TokenEndpointUnavailable, match="https"):
        oauth.refresh(where, "secret", "refresh", 5)


@pytest.mark.parametrize("behaviour", ["trickle-body", "trickle-headers"])
def test_a_trickling_token_endpoint_is_cut_at_the_total_deadline(behaviour: str) -> None:
    for server in _running(Server(behaviour)):
        started = time.monotonic()
        with pytest.raises(oauth.TokenEndpointUnavailable, match="in time"):
            oauth.refresh(_endpoints(server.url), "secret", "refresh", 2)
        # Two seconds of budget; a per-socket timeout alone would wait for all ~1,070 bytes (as
        # many seconds): the bound leaves room for a loaded machine.
        assert time.monotonic() - started < 10
        assert len(server.requests) == 1


def test_a_token_endpoint_whose_certificate_no_trusted_ca_signed_gets_nothing(tmp_path: Path) -> None:
    # https to loopback with a certificate of a private CA (trusted by no default store): refused
    # on every request, the refresh token never sent; the TLS context is made once and reused.
    from devstack.dovecot import _write_tls_material

    _, cert, key = _write_tls_material(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = Server("answer")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    for running in _running(server):
        where = _endpoints(running.url.replace("http://", "https://"))
        for _ in range(2):
            with pytest.raises(oauth.TokenEndpointUnavailable):
                oauth.refresh(where, "secret", "refresh", 5)
        assert running.requests == []
