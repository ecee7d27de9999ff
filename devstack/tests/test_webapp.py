"""The local stack's web app paths (devstack/webapp.py): files of web/dist only, the local sign-in."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest

from devstack import auth, webapp

LOGIN = ("demo", "demo-office")


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    built = tmp_path / "dist"
    (built / "assets").mkdir(parents=True)
    (built / "index.html").write_text("<!doctype html><title>app</title>")
    (built / "assets" / "index-abc.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("outside dist")
    return built


def test_the_app_and_its_assets_are_served_and_nothing_outside_dist(dist: Path) -> None:
    status, headers, body = webapp.handle("GET", "/app/", b"", LOGIN, dist)
    assert (status, headers["content-type"], headers["cache-control"]) == (200, "text/html", "no-cache")
    assert body.startswith(b"<!doctype html>")
    status, headers, _ = webapp.handle("GET", "/app/assets/index-abc.js", b"", LOGIN, dist)
    assert status == 200 and "immutable" in headers["cache-control"]
    assert webapp.handle("GET", "/app", b"", LOGIN, dist)[:2] == (301, {"location": "/app/"})
    for path in ("/app/../secret.txt", "/app/%2e%2e/secret.txt", "/app/assets/../../secret.txt", "/app/nope.js"):
        assert webapp.handle("GET", path, b"", LOGIN, dist)[0] == 404, path
    assert webapp.handle("POST", "/app/", b"", LOGIN, dist)[0] == 405
    assert webapp.handle("GET", "/v1/users/me/mail-settings", b"", LOGIN, dist) is None


def test_config_turns_on_the_local_sign_in_with_the_stacks_user(dist: Path) -> None:
    status, _, body = webapp.handle("GET", "/app/config.json", b"", LOGIN, dist)
    assert status == 200
    assert json.loads(body) == {"api": "", "localSignIn": True, "localUser": "demo", "localTenant": "demo-office"}


def test_an_unbuilt_app_says_how_to_build_it(tmp_path: Path) -> None:
    status, _, body = webapp.handle("GET", "/app/", b"", LOGIN, tmp_path / "missing")
    assert status == 404 and b"make web" in body


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the documented local secret
def test_the_local_token_is_what_make_token_signs() -> None:
    raw = json.dumps({"user": "boss", "tenant": "acme", "role": "admin"}).encode()
    status, _, body = webapp.handle("POST", "/local/token", raw, LOGIN)
    assert status == 200
    claims = auth.verify_bearer("Bearer " + json.loads(body)["token"])
    assert claims is not None and (claims["sub"], claims["tenant_id"], claims["role"]) == ("boss", "acme", "admin")
    assert jwt.get_unverified_header(json.loads(body)["token"])["alg"] == "HS256"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json", "body"),
        (b"[]", "body"),
        (b'{"user": "", "tenant": "acme"}', "user"),
        (b'{"user": "a/b", "tenant": "acme"}', "user"),
        (b'{"user": "alice", "tenant": 7}', "tenant"),
        (b'{"user": "alice", "tenant": "acme", "role": "root"}', "role"),
        (b'{"user": "' + b"a" * 5000 + b'"}', "body"),
    ],
)
def test_a_bad_local_sign_in_names_the_field(raw: bytes, field: str) -> None:
    status, _, body = webapp.handle("POST", "/local/token", raw, LOGIN)
    assert status == 422 and json.loads(body)["error"]["field"] == field


def test_the_local_token_is_post_only() -> None:
    assert webapp.handle("GET", "/local/token", b"", LOGIN)[0] == 405
