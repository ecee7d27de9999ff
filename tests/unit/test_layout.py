"""The layout rules of README "What runs where", checked so they cannot rot: every module imports
on its own (no import cycles), imaplib's internals stay in the one IMAP connection module, and
PynamoDB models and key formats stay in the data layer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers" / "shared" / "mailsync"
CODE_DIRS = [ROOT / "layers", ROOT / "functions", ROOT / "devstack", ROOT / "bench"]


def modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def code_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in d.rglob("*.py") if ".aws-sam" not in p.parts]


def code_of(path: Path) -> str:
    """The file without its comment lines (a comment may quote a key to explain a rule)."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


# Run in one interpreter: every module outside the package that importing the whole package loads
# (boto3, Powertools, pydantic, and what they load lazily, such as the X-Ray SDK) is imported once,
# then every package module is imported first in a forked child that holds no module of the
# package. A fresh interpreter per module (boto3, Powertools and pydantic loaded ninety times) took
# 90 s; children that loaded the lazy third-party modules again each took 9 s more.
IMPORT_EACH_FIRST = """
import importlib, os, sys
from pathlib import Path

package, names = Path(sys.argv[1]).name, sys.argv[2:]

def ours(module):
    return module.split(".")[0] == package

# What the whole package loads, found in a throwaway child so the parent stays free of the package.
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read_end)
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:
            pass  # a module that fails here fails in its own child below, with its error
    with os.fdopen(write_end, "w") as out:
        out.write("\\n".join(m for m in list(sys.modules) if not ours(m)))
    os._exit(0)
os.close(write_end)
with os.fdopen(read_end) as pipe:
    loaded = pipe.read().split()
os.waitpid(pid, 0)
for name in loaded:
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except BaseException:
            pass  # not importable by name (an alias, a module made at run time): the child loads it
assert not [m for m in sys.modules if ours(m)]
for name in names:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            print(f"{name}: {exc!r}", flush=True)
            os._exit(1)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """A cycle shows as an ImportError for whichever module of it is imported first: each module
    is imported first once, in a process where no module of the package was loaded before."""
    names = modules()
    env = {"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "eu-west-1"}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_FIRST, str(PACKAGE), *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == []
    assert len(names) > 30


IMAPLIB_INTERNALS = re.compile(r"\b(_simple_command|untagged_responses|_untagged_response|_command_complete)\b")


def test_imaplib_internals_only_in_the_connection_module() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in code_files()
        if p.name != "connection.py" and IMAPLIB_INTERNALS.search(code_of(p))
    ]
    assert offenders == []


PYNAMODB = re.compile(r"^\s*(from|import) pynamodb\b", re.M)
KEY_STRINGS = re.compile(r"""["'](M#|L#|W#|K#|T#|C#|H#|OPS#|A#)""")


@pytest.mark.parametrize("pattern", [PYNAMODB, KEY_STRINGS], ids=["pynamodb", "key strings"])
def test_models_and_keys_only_in_the_data_layer(pattern: re.Pattern[str]) -> None:
    dal = PACKAGE / "dal"
    offenders = [str(p.relative_to(ROOT)) for p in code_files() if dal not in p.parents and pattern.search(code_of(p))]
    assert offenders == []


def imports_of(path: Path) -> set[str]:
    return set(re.findall(r"^\s*(?:from|import) (mailsync(?:\.\w+)*)", path.read_text(), re.M))


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("sync", ("mailsync.services",)),  # the engine makes its own reads: no service calls mid-batch
        ("sync/planner", ("mailsync.dal", "mailsync.mailbox", "mailsync.aws", "mailsync.blobstore", "mailsync.events")),
        ("mailbox", ("mailsync.sync", "mailsync.services", "mailsync.dal")),  # protocol only
        ("dal", ("mailsync.services", "mailsync.sync", "mailsync.mailbox")),
    ],
)
def test_layers_only_import_downwards(package: str, forbidden: tuple[str, ...]) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(i for i in imports_of(p) if i.startswith(forbidden))
        for p in (PACKAGE / package).rglob("*.py")
    }
    assert {p: i for p, i in offenders.items() if i} == {}
