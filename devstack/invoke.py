"""``make invoke FN=<function> EVENT=<file>``: run one function's handler in this process against
the running local stack (``make run`` or ``make demo``), without Docker.

The stack writes what its functions run with (moto's endpoint, the resources' names, the local
switches) to ``.aws-sam/local/stack.json``; this reads it, loads the handler as the local stack
does and prints the handler's result as JSON on stdout. The function's logs go to stderr, as with
``sam local invoke``. ``FN`` is the template's logical id (``SyncWorkerFunction``) or the folder
under ``functions/`` (``sync_worker``); without it, each event's file name says its function
(events/ names them after the folder: ``api_*.json``, ``scheduler.json``, ``sync_worker*.json``).
Several events run in order in one process and print as one JSON object, file -> result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from devstack.lambda_runtime import LambdaContext, load_handler
from devstack.provision import load_template
from devstack.run import FUNCTION_TYPE, STACK_FILE, TEMPLATE, local_defaults, state_dir


class InvokeError(Exception):
    """Why nothing was invoked, in words for the developer."""


def functions(template: dict[str, Any]) -> dict[str, str]:
    """Each function's logical id -> its folder under functions/ (from CodeUri)."""
    out = {}
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") == FUNCTION_TYPE:
            code_uri = str(resource["Properties"]["CodeUri"]).rstrip("/")
            out[logical_id] = Path(code_uri).name
    return out


def resolve_function(name: str, template: dict[str, Any]) -> tuple[str, str]:
    """(logical id, folder) for a logical id or a folder name."""
    known = functions(template)
    for logical_id, folder in known.items():
        if name in (logical_id, folder):
            return logical_id, folder
    choices = ", ".join(f"{k} ({v})" for k, v in sorted(known.items()))
    raise InvokeError(f"unknown function {name!r}: one of {choices}")


def function_for_event(event_file: Path, template: dict[str, Any]) -> tuple[str, str]:
    """(logical id, folder) of the function an events/ file is named after (longest folder first)."""
    for logical_id, folder in sorted(functions(template).items(), key=lambda item: -len(item[1])):
        if event_file.stem == folder or event_file.stem.startswith(folder + "_"):
            return logical_id, folder
    raise InvokeError(f"{event_file.name} does not name its function: pass FN=<function>")


def running_stack(directory: Path) -> dict[str, Any]:
    """The running stack's description; an error when no stack runs."""
    path = directory / STACK_FILE
    try:
        stack = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvokeError("no local stack is running: start `make run` (or `make demo`) in another shell") from None
    pid = int(stack.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise InvokeError(
            f"the local stack that wrote {path} (pid {pid}) has stopped: start `make run` again"
        ) from None
    except PermissionError:
        pass  # alive, owned by another user
    return stack


def invoke(function: str | None, event_file: Path, directory: Path | None = None) -> Any:
    """Run ``function``'s handler (None: the one the file is named after) on the event in
    ``event_file`` against the running stack."""
    template = load_template(TEMPLATE)
    if function:
        logical_id, folder = resolve_function(function, template)
    else:
        logical_id, folder = function_for_event(event_file, template)
    try:
        event = json.loads(event_file.read_text())
    except (OSError, ValueError) as exc:
        raise InvokeError(f"cannot read the event {event_file}: {exc}") from None
    stack = running_stack(directory or state_dir())
    for key, value in local_defaults().items():
        os.environ.setdefault(key, value)
    os.environ.update(stack["environment"])
    timeout = template["Resources"][logical_id]["Properties"].get("Timeout") or (
        (template.get("Globals") or {}).get("Function", {}).get("Timeout", 30)
    )
    # Powertools' Logger binds its stream when the handler's modules are imported: the function's
    # log lines go to stderr, the result alone to stdout.
    with contextlib.redirect_stdout(sys.stderr):
        handler = load_handler(folder)
        return handler(event, LambdaContext(function_name=logical_id, timeout_seconds=float(timeout)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--function", help="logical id (SyncWorkerFunction) or folder (sync_worker)")
    parser.add_argument("events", nargs="+", help="event files, e.g. events/sync_worker.json")
    args = parser.parse_args(argv)
    paths = [Path(name) for name in args.events]
    results = {}
    try:
        for path in paths:
            results[str(path)] = invoke(args.function, path if path.is_absolute() else Path.cwd() / path)
    except InvokeError as exc:
        print(f"make invoke: {exc}", file=sys.stderr)
        return 2
    output = results[str(paths[0])] if len(paths) == 1 else results
    print(json.dumps(output, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
