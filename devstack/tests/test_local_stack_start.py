"""Starting the local stack on a taken port fails at once, naming the port and MAILSYNC_PORT."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from devstack import run


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_is_named_with_the_variable_that_moves_it(taken_port: int) -> None:
    stack = run.LocalStack(port=taken_port)
    with pytest.raises(run.PortInUse) as caught:
        stack.start()
    message = str(caught.value)
    assert f"port {taken_port}" in message and f"MAILSYNC_PORT={taken_port + 1}" in message
    assert stack._moto is None, "nothing else was started"


def test_make_run_says_so_and_exits(
    taken_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAILSYNC_PORT", str(taken_port))
    with pytest.raises(SystemExit) as exited:
        run.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("could not start the local stack: port") and "MAILSYNC_PORT" in err, err
