"""The README and docs/ cannot rot: every command they show is checked here against what it names
(tests/e2e/test_readme_commands.py runs the Quick start's and make invoke's for real).

- ``make <target>``: the target is in ``make help``;
- ``curl``: the path exists in docs/openapi.json with that method;
- ``sam ...`` and ``aws ...``: the subcommand and every option exist (SAM CLI's own click
  commands, botocore's service models); sam local's function ids and files exist;
- ``make invoke``: the function and the event files exist;
- every ``MAILSYNC_*`` variable the docs mention is read somewhere;
- relative links (and their #anchors) lead somewhere; table rows have their header's cells.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from devstack.invoke import function_for_event, resolve_function
from devstack.provision import load_template
from devstack.run import SAM_ENV_FILE, STATE_DIR, TEMPLATE
from mailsync.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMANDS = ("make", "curl", "sam", "aws", "export")
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")


def fenced(text: str) -> Iterator[str]:
    for language, body in FENCE.findall(text):
        if language in ("bash", "sh", "shell"):
            yield body


def commands(text: str) -> list[str]:
    """Shell commands of the fenced shell blocks (continuations joined, comments dropped) and of
    inline code that starts with one of COMMANDS."""
    found = []
    for block in fenced(text):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                found.append(line)
    prose = FENCE.sub("", text)
    found += [code for code in INLINE.findall(prose) if code.split(" ", 1)[0] in COMMANDS and " " in code]
    return found


def all_commands() -> list[tuple[str, str]]:
    return [(doc.name, command) for doc in DOCS for command in commands(doc.read_text())]


@cache
def make_targets() -> frozenset[str]:
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return frozenset(re.findall(r"^\s+make (\S+)", out, re.MULTILINE))


@cache
def openapi_routes() -> frozenset[tuple[str, str]]:
    document = json.loads((ROOT / "docs" / "openapi.json").read_text())
    return frozenset((method.upper(), path) for path, item in document["paths"].items() for method in item)


@cache
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


def route_of(path: str) -> str | None:
    """The OpenAPI path template a concrete path matches."""
    for _, template_path in openapi_routes():
        pattern = re.sub(r"\\\{[^}]+\\\}", r"[^/]+", re.escape(template_path))
        if re.fullmatch(pattern, path):
            return template_path
    return None


def test_the_docs_show_commands_at_all() -> None:
    found = all_commands()
    assert sum(c.startswith("curl ") for _, c in found) >= 10
    assert any(c.startswith("sam local invoke") for _, c in found)
    assert any(c.startswith("make invoke") for _, c in found)


def test_every_make_target_in_the_docs_is_in_make_help() -> None:
    texts = "\n".join(command for _, command in all_commands())
    # Also the targets named in prose: `make soak`, `make servers`, ...
    texts += "\n" + "\n".join(INLINE.findall("\n".join(doc.read_text() for doc in DOCS)))
    named = set(re.findall(r"\bmake (?:-s )?([a-z][a-z0-9-]*)", texts))
    assert named, "no make targets found"
    assert named <= make_targets(), f"not in make help: {sorted(named - make_targets())}"


def test_every_curl_in_the_docs_calls_a_documented_route() -> None:
    checked = 0
    for doc, command in all_commands():
        if not command.startswith("curl "):
            continue
        words = shlex.split(command)
        method = words[words.index("-X") + 1] if "-X" in words else "GET"
        [url] = [w for w in words if w.startswith("http")]
        path = re.sub(r"^https?://[^/]+", "", url).split("?", 1)[0]
        route = route_of(path)
        assert route, f"{doc}: {path} is not an API path ({command})"
        assert (method, route) in openapi_routes(), f"{doc}: {method} {route} is not documented ({command})"
        checked += 1
    assert checked


@cache
def click_options(words: tuple[str, ...]) -> frozenset[str]:
    from samcli.commands.build.command import cli as build
    from samcli.commands.deploy.command import cli as deploy
    from samcli.commands.local.invoke.cli import cli as invoke
    from samcli.commands.local.start_api.cli import cli as start_api
    from samcli.commands.validate.validate import cli as validate

    known = {
        ("build",): build,
        ("deploy",): deploy,
        ("validate",): validate,
        ("local", "invoke"): invoke,
        ("local", "start-api"): start_api,
    }
    assert words in known, f"sam {' '.join(words)}: not a command the docs are checked for"
    return frozenset(o for p in known[words].params for o in (*p.opts, *p.secondary_opts))


def test_every_sam_command_uses_existing_options_functions_and_files() -> None:
    functions = {k for k, v in template()["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    env_file = str((STATE_DIR / SAM_ENV_FILE).relative_to(ROOT))
    checked = 0
    for doc, command in all_commands():
        if not command.startswith("sam "):
            continue
        words = shlex.split(command)[1:]
        if words == ["local"]:
            continue  # prose: "`sam local`"
        sub = tuple(words[:2]) if words[0] == "local" else (words[0],)
        options = click_options(sub)
        rest = words[len(sub) :]
        for word in rest:
            if word.startswith("-"):
                assert word.split("=", 1)[0] in options, f"{doc}: sam {' '.join(sub)} has no {word}"
        if sub == ("local", "invoke") and rest:
            assert rest[0] in functions, f"{doc}: no function {rest[0]} ({command})"
        for flag in ("-e", "--event"):
            if flag in rest:
                assert (ROOT / rest[rest.index(flag) + 1]).is_file(), command
        if "--env-vars" in rest:
            assert rest[rest.index("--env-vars") + 1] == env_file, f"make run writes {env_file}"
        checked += 1
    assert checked


def test_every_make_invoke_names_a_function_and_event_files_that_exist() -> None:
    checked = 0
    for doc, command in all_commands():
        if not command.startswith("make invoke"):
            continue
        arguments = dict(word.split("=", 1) for word in shlex.split(command)[2:])
        if "EVENT" not in arguments:
            continue  # prose: "`make invoke`"
        for event in arguments["EVENT"].split():
            assert (ROOT / event).is_file(), f"{doc}: {event}"
            if "FN" in arguments:
                resolve_function(arguments["FN"], template())
            else:
                function_for_event(ROOT / event, template())
        checked += 1
    assert checked


def test_every_sample_event_names_its_function() -> None:
    for event in sorted((ROOT / "events").glob("*.json")):
        function_for_event(event, template())
        json.loads(event.read_text())


def test_every_aws_cli_command_exists() -> None:
    import botocore.session

    session = botocore.session.get_session()
    checked = 0
    for doc, command in all_commands():
        if not command.startswith("aws "):
            continue
        service, operation = shlex.split(command)[1:3]
        model = session.get_service_model(service)
        pascal = "".join(part.capitalize() for part in operation.split("-"))
        assert pascal in model.operation_names, f"{doc}: aws {service} {operation}"
        shape = model.operation_model(pascal).input_shape
        members = {re.sub(r"(?<!^)(?=[A-Z])", "-", m).lower() for m in (shape.members if shape else {})}
        for word in shlex.split(command)[3:]:
            if word.startswith("--"):
                assert word[2:] in members, f"{doc}: aws {service} {operation} has no {word}"
        checked += 1
    assert checked


def test_every_mailsync_variable_in_the_docs_is_read_somewhere() -> None:
    settings = {f"MAILSYNC_{name.upper()}" for name in Settings.model_fields}
    code = "\n".join(
        path.read_text(errors="replace")
        for folder in ("devstack", "tests", "bench")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".sh") and ".venv" not in path.parts
    )
    code += (ROOT / "Makefile").read_text()
    mentioned = set(re.findall(r"\bMAILSYNC_[A-Z0-9_]+\b", "\n".join(doc.read_text() for doc in DOCS)))
    assert mentioned
    unknown = sorted(v for v in mentioned if v not in settings and not re.search(rf"\b{v}\b", code))
    assert not unknown, f"documented but read nowhere: {unknown}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_relative_links_and_anchors_lead_somewhere() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            assert linked.exists(), f"{doc.name}: {target}"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.MULTILINE)
                assert anchor in {slug(h) for h in headings}, f"{doc.name}: no #{anchor} in {linked.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_table_rows_have_their_headers_cells(doc: Path) -> None:
    """An unescaped ``|`` in a cell (even inside backticks) splits it and breaks the row."""
    table: list[str] = []
    for line in [*FENCE.sub("", doc.read_text()).splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            cells = [len(re.split(r"(?<!\\)\|", row.strip().strip("|"))) for row in table]
            assert len(set(cells)) == 1, f"{doc.name}: a row of the table at {table[0]!r} has {cells}"
            table = []
