"""The OAuth2 flow's requests and responses as the end-to-end test sees them, rendered as Markdown
with every secret replaced by a label (``<access token #1>``) so the same value can be followed
from step to step. ``tests/integration/test_oauth_end_to_end.py`` records it and, with
``MAILSYNC_WRITE_OAUTH_FLOW=1``, writes it to ``docs/oauth-flow.md``."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Keys whose values are secrets, wherever they appear (form, query, JSON, fragment).
SECRET_KEYS = {
    "access_token": "access token",
    "refresh_token": "refresh token",
    "id_token": "ID token",
    "code": "authorization code",
    "oauth_code": "authorization code",
    "code_verifier": "PKCE verifier",
    "client_secret": "client secret",
    "state": "state",
    "oauth_state": "state",
    "token": "token",
}
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")


@dataclass
class Entry:
    at: int
    title: str
    request: str = ""
    response: str = ""
    note: str = ""


@dataclass
class Transcript:
    entries: list[Entry] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    _counts: Counter[str] = field(default_factory=Counter)
    replacements: dict[str, str] = field(default_factory=dict)  # dynamic, not secret: ports, names

    # -- recording ---------------------------------------------------------------------------

    def phase(self, title: str) -> None:
        self.entries.append(Entry(time.monotonic_ns(), f"## {title}"))

    def note(self, title: str, text: str) -> None:
        self.entries.append(Entry(time.monotonic_ns(), f"### {title}", note=text))

    def http(
        self,
        title: str,
        started: int,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: Any = None,
        status: int,
        response_headers: dict[str, str] | None = None,
        response: Any = None,
    ) -> None:
        """One request and its answer; ``started`` (``time.monotonic_ns()`` when it was sent)
        orders what other parties did meanwhile (the provider's exchanges) after it."""
        request = f"{method} {target}\n" + _headers(headers) + _body(body)
        answer = f"HTTP/1.1 {status}\n" + _headers(response_headers) + _body(response)
        self.entries.append(Entry(started, f"### {title}", request=request, response=answer))

    def provider_exchanges(self, exchanges: list[dict[str, Any]], provider_url: str) -> None:
        for x in exchanges:
            path = x["path"].partition("?")[0]
            who = {"/introspect": "Dovecot", "/authorize": "Browser"}.get(path, "Mailsync")
            what = {
                "/authorize": "the consent screen (approved at once by the test server)",
                "/token": "token request",
                "/introspect": "is this access token valid? (RFC 7662, Dovecot's oauth2 passdb)",
                "/revoke": "revoke the grant (RFC 7009)",
            }.get(path, path)
            self.http(
                f"{who} → provider: {what}",
                x["at"],
                x["method"],
                provider_url + x["path"],
                headers=x["headers"],
                body=_form(x["form"]) if x["form"] else None,
                status=x["status"],
                response_headers={k: v for k, v in x["response_headers"].items() if k.lower() == "location"},
                response=_json_or_text(x["response"]),
            )

    # -- rendering ------------------------------------------------------------------------------

    def label(self, kind: str, value: str) -> str:
        if value not in self.labels:
            self._counts[kind] += 1
            self.labels[value] = f"<{kind} #{self._counts[kind]}>"
        return self.labels[value]

    def _collect(self, text: str) -> None:
        """Label every secret found by its key in ``text`` (JSON bodies, forms, URLs)."""
        for key, kind in SECRET_KEYS.items():
            for match in re.finditer(rf'"{key}": "([^"]+)"', text):
                self._label_value(kind, match.group(1))
            for match in re.finditer(rf"(?:[?&#\s]|^){key}=([^&\s#\"]+)", text, re.MULTILINE):
                self._label_value(kind, urllib.parse.unquote(match.group(1)))

    def _label_value(self, kind: str, value: str) -> None:
        if value in self.labels or value.startswith("<"):
            return
        if kind == "token":  # revoke/introspect: whichever token it is, labelled where it was issued
            kind = "token"
        self.label(kind, value)

    def render(self, header: str) -> str:
        ordered = sorted(self.entries, key=lambda e: e.at)
        for entry in ordered:
            self._collect(entry.request + "\n" + entry.response)
        parts = [header.rstrip() + "\n"]
        number = 0
        for entry in ordered:
            if entry.title.startswith("## "):
                parts.append(f"\n{entry.title}\n")
                continue
            number += 1
            parts.append(f"\n{entry.title.replace('### ', f'### {number}. ', 1)}\n")
            if entry.note:
                parts.append(f"\n{entry.note}\n")
            if entry.request:
                parts.append(f"\n```http\n{entry.request.rstrip()}\n```\n\n```http\n{entry.response.rstrip()}\n```\n")
        text = "".join(parts)
        secrets = sorted(self.labels, key=len, reverse=True)
        for value in secrets:
            text = text.replace(value, self.labels[value])
            quoted = urllib.parse.quote(value, safe="")
            if quoted != value:
                text = text.replace(quoted, self.labels[value])
        for value, shown in sorted(self.replacements.items(), key=lambda kv: len(kv[0]), reverse=True):
            text = text.replace(value, shown)
        return _TIME.sub("<time>", text)


def _headers(headers: dict[str, str] | None) -> str:
    out = ""
    for name, value in (headers or {}).items():
        if name.lower() == "authorization":
            scheme = value.split(" ", 1)[0]
            value = f"{scheme} <{'client id:client secret' if scheme.lower() == 'basic' else 'credentials'}>"
        out += f"{name}: {value}\n"
    return out


def _body(body: Any) -> str:
    if body is None or body == "":
        return ""
    if isinstance(body, (dict, list)):
        return "\n" + json.dumps(body, indent=2, ensure_ascii=False, default=str) + "\n"
    return "\n" + str(body) + "\n"


def _form(form: dict[str, str]) -> str:
    """A form body, one parameter a line (the wire has them on one line, joined by ``&``)."""
    return "&\n".join(urllib.parse.urlencode({k: v}) for k, v in form.items())


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return raw
