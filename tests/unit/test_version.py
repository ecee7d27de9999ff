"""One version (the package, pyproject.toml, the API document) and a `make help` that lists the targets."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import mailsync

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_the_project_and_the_api_document_have_one_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    document = json.loads((ROOT / "docs" / "openapi.json").read_text())["info"]["version"]
    assert mailsync.__version__ == project == document


def test_make_help_lists_every_documented_target() -> None:
    import re
    import subprocess

    makefile = (ROOT / "Makefile").read_text()
    documented = set(re.findall(r"^([a-z][a-z0-9-]*):[^\n]*## ", makefile, re.M))
    shown = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    listed = set(re.findall(r"^  make (\S+)", shown.stdout, re.M))
    assert {"run", "demo", "test", "unit", "soak", "help"} <= listed
    assert listed == documented
