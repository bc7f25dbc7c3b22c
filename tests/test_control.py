"""The control socket's transport (commonsyncd.control), with real Unix sockets.

The server runs ``trio.run`` in a thread of its own, so that the blocking client (as the CLI
uses it) and raw sockets (as a bad client would) can talk to it from the test. Every wait is
bounded: sockets, thread joins and child processes all have timeouts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio
from commonsyncd import control
from commonsyncd.control import (
    MAX_BODY,
    MAX_HEAD,
    ControlClient,
    ControlError,
    ControlSocketError,
    DaemonNotRunningError,
    Request,
    serve_control,
)

TIMEOUT = 10.0
NOBODY = 65534

#: Set by the ``/forever`` stream when the server stops it (the client went away).
stream_stopped = threading.Event()


async def numbers(count: int) -> AsyncIterator[dict[str, int]]:
    for n in range(count):
        yield {"n": n}
        await trio.sleep(0.01)


async def forever() -> AsyncIterator[dict[str, str]]:
    try:
        yield {"hello": "there"}
        await trio.sleep_forever()
    finally:
        stream_stopped.set()


async def handler(request: Request) -> Any:
    match request.path:
        case "/status":
            return {"method": request.method, "query": request.query, "body": request.body}
        case "/fail":
            raise ControlError(409, "folder photos is busy", hint="try again in a minute")
        case "/crash":
            raise RuntimeError("a bug in a handler")
        case "/events":
            return numbers(int(request.query.get("n", "3")))
        case "/forever":
            return forever()
    raise ControlError(404, f"no such request: {request.path}")


class Server:
    """``serve_control`` in a thread running ``trio.run``, stoppable from the test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Server:
        self._thread.start()
        assert self._started.wait(TIMEOUT), "the server did not start"
        if self.error is not None:
            self._thread.join(TIMEOUT)
            raise self.error
        return self

    def stop(self) -> None:
        if self._thread.is_alive() and self._scope is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the server did not stop"

    def _run(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(serve_control, self.path, handler)
                    self._started.set()

        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test by start()
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            self.error = exc
        finally:
            self._started.set()


@contextmanager
def serving(path: Path) -> Iterator[Server]:
    server = Server(path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "control.sock"


@pytest.fixture
def server(sock_path: Path) -> Iterator[Server]:
    with serving(sock_path) as running:
        yield running
    assert not sock_path.exists(), "a stopped server leaves no socket behind"


def client(path: Path) -> ControlClient:
    return ControlClient(path, timeout=TIMEOUT)


def raw_exchange(path: Path, data: bytes, *, close_write: bool = True) -> bytes:
    """Send ``data`` as a (possibly bad) client would and read the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(TIMEOUT)
        raw.connect(str(path))
        with suppress(BrokenPipeError, ConnectionResetError):
            raw.sendall(data)
            if close_write:
                raw.shutdown(socket.SHUT_WR)
        return read_all(raw)


def read_all(raw: socket.socket) -> bytes:
    answer = b""
    with suppress(ConnectionResetError):
        while chunk := raw.recv(65536):
            answer += chunk
    return answer


def status_and_json(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), answer[:200]
    assert b"content-type: application/json" in head.lower()
    return int(head.split()[1]), json.loads(body)


def assert_still_serving(path: Path) -> None:
    assert client(path).request("GET", "/status")["method"] == "GET"


# -- requests and answers ----------------------------------------------------------------------


def test_get_and_post_round_trip(server: Server) -> None:
    answer = client(server.path).request("GET", "/status?replay=1&x=a%20b")
    assert answer == {"method": "GET", "query": {"replay": "1", "x": "a b"}, "body": None}
    body = {"label": "Photos é", "addresses": ["10.0.0.2:22000"], "n": 3, "none": None}
    answer = client(server.path).request("POST", "/status", body)
    assert answer == {"method": "POST", "query": {}, "body": body}


def test_an_answer_is_curlable_http(server: Server) -> None:
    status, body = status_and_json(
        raw_exchange(server.path, b"GET /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    )
    assert status == 200
    assert body == {"method": "GET", "query": {}, "body": None}


def test_control_error_is_a_status_and_error_json(server: Server) -> None:
    status, body = status_and_json(
        raw_exchange(server.path, b"GET /fail HTTP/1.1\r\nHost: localhost\r\n\r\n")
    )
    assert status == 409
    assert body == {"error": "folder photos is busy", "hint": "try again in a minute"}
    with pytest.raises(ControlError) as caught:
        client(server.path).request("POST", "/fail", {"folder": "photos"})
    assert (caught.value.status, caught.value.message, caught.value.hint) == (
        409,
        "folder photos is busy",
        "try again in a minute",
    )
    assert str(caught.value) == "folder photos is busy"


def test_a_crashing_handler_is_a_500_and_the_server_goes_on(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="commonsyncd.control")
    with pytest.raises(ControlError) as caught:
        client(server.path).request("GET", "/crash")
    assert caught.value.status == 500
    assert "a bug" not in caught.value.message  # no internals to the client
    assert "internal error" in caught.value.message
    assert "a bug in a handler" in caplog.text  # but in the daemon's log
    assert_still_serving(server.path)


def chunked(total: int) -> bytes:
    piece = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(total // len(piece)))
    return chunks + b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        pytest.param(b"\x00\xff garbage\r\n\r\n", 400, "malformed", id="garbage"),
        pytest.param(
            b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
            400,
            "malformed",
            id="bad-content-length",
        ),
        pytest.param(
            b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD + 1024) + b"\r\n\r\n",
            431,
            "head is larger",
            id="head-too-large",
        ),
        pytest.param(
            b"GET /status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * MAX_HEAD),  # never ends
            431,
            "head is larger",
            id="endless-head",
        ),
        pytest.param(
            b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
            + b"{" * (MAX_BODY + 1),
            413,
            "body is larger",
            id="body-too-large",
        ),
        pytest.param(
            b"POST /status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(MAX_BODY + 65536),
            413,
            "body is larger",
            id="chunked-body-too-large",
        ),
        pytest.param(
            b'POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n{"x": ',
            400,
            "not valid JSON",
            id="bad-json",
        ),
        pytest.param(
            b'POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"\xff"',
            400,
            "not valid JSON",
            id="body-not-utf8",
        ),
    ],
)
def test_a_bad_request_gets_a_4xx_and_the_server_goes_on(
    server: Server, data: bytes, status: int, words: str
) -> None:
    answer_status, body = status_and_json(raw_exchange(server.path, data))
    assert answer_status == status
    assert words in body["error"]
    assert_still_serving(server.path)


def test_a_client_that_says_nothing_is_timed_out(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 0.3)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.settimeout(TIMEOUT)
        silent.connect(str(server.path))
        silent.sendall(b"GET /status HTTP/1.1\r\n")  # and then nothing
        assert_still_serving(server.path)  # a silent client does not hold the server up
        status, body = status_and_json(read_all(silent))
    assert status == 408
    assert "in time" in body["error"]


def test_too_many_connections_get_a_503(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "MAX_CONNECTIONS", 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.settimeout(TIMEOUT)
        busy.connect(str(server.path))
        busy.sendall(b"GET /status HTTP/1.1\r\n")  # holds its slot
        with pytest.raises(ControlError) as caught:
            client(server.path).request("GET", "/status")
        busy.shutdown(socket.SHUT_WR)
        read_all(busy)  # until the server has let it go
    assert caught.value.status == 503
    assert_still_serving(server.path)


# -- streams -----------------------------------------------------------------------------------


def test_a_stream_delivers_its_items_and_ends(server: Server) -> None:
    items = list(client(server.path).stream("/events?n=5"))
    assert items == [{"n": n} for n in range(5)]
    assert list(client(server.path).stream("/events?n=0")) == []


def test_a_stream_is_ndjson_over_chunked_http(server: Server) -> None:
    answer = raw_exchange(
        server.path, b"GET /events?n=2 HTTP/1.1\r\nHost: x\r\n\r\n", close_write=False
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"application/x-ndjson" in head
    assert b"transfer-encoding: chunked" in head.lower()
    assert b'{"n": 0}\n' in body
    assert body.endswith(b"0\r\n\r\n")  # ended properly


def test_a_stream_stops_when_the_client_goes_away(server: Server) -> None:
    stream_stopped.clear()
    items = client(server.path).stream("/forever")
    assert next(items) == {"hello": "there"}
    items.close()  # as when `commonsync events` is interrupted
    assert stream_stopped.wait(TIMEOUT), "the server kept a stream for a client that left"
    assert_still_serving(server.path)


def test_a_stream_that_fails_raises_the_error(server: Server) -> None:
    with pytest.raises(ControlError, match="busy") as caught:
        list(client(server.path).stream("/fail"))
    assert caught.value.status == 409


# -- the socket file ---------------------------------------------------------------------------


def test_socket_is_0600_in_a_0700_directory_whatever_the_umask(sock_path: Path) -> None:
    previous = os.umask(0)
    try:
        with serving(sock_path):
            assert stat.S_ISSOCK(sock_path.stat().st_mode)
            assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
            assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o700
    finally:
        os.umask(previous)
    assert not sock_path.exists()


def test_a_directory_other_users_can_write_is_refused(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    os.chmod(sock_path.parent, 0o777)
    with pytest.raises(ControlSocketError, match="writable by other users"):
        Server(sock_path).start()
    assert not sock_path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_of_another_user_is_refused(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    os.chown(sock_path.parent, NOBODY, NOBODY)
    with pytest.raises(ControlSocketError, match="belongs to another user"):
        Server(sock_path).start()


def test_a_file_that_is_not_a_socket_is_left_alone(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    sock_path.write_text("precious")
    with pytest.raises(ControlSocketError, match="not a socket"):
        Server(sock_path).start()
    assert sock_path.read_text() == "precious"


def test_without_a_daemon_the_client_says_so(sock_path: Path) -> None:
    with pytest.raises(DaemonNotRunningError) as caught:
        client(sock_path).request("GET", "/status")
    assert str(sock_path) in str(caught.value)
    assert "not running" in str(caught.value)
    assert "commonsync daemon" in caught.value.hint


def dead_socket(path: Path) -> None:
    """A socket file as a daemon that was killed leaves it: nobody listens."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    assert stat.S_ISSOCK(path.stat().st_mode)


def test_a_stale_socket_is_replaced(sock_path: Path) -> None:
    dead_socket(sock_path)
    with pytest.raises(DaemonNotRunningError):
        client(sock_path).request("GET", "/status")
    with serving(sock_path):
        assert_still_serving(sock_path)


def test_a_second_server_on_the_same_path_fails_clearly(server: Server) -> None:
    with pytest.raises(ControlSocketError, match="another daemon is already running"):
        Server(server.path).start()
    assert_still_serving(server.path)  # the first one keeps its socket


def test_a_socket_another_process_listens_on_is_not_taken(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(sock_path))
        other.listen(1)
        with pytest.raises(ControlSocketError, match="another daemon is already running"):
            Server(sock_path).start()
        assert sock_path.exists()


# -- other users -------------------------------------------------------------------------------


def as_other_user(path: Path) -> str:
    """Connect and ask as another user, in a forked child that gives up root: what happened."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        outcome = "?"
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            outcome = other_user_client(path)
        except BaseException as exc:
            outcome = f"failed: {exc!r}"
        finally:
            os.write(write_end, outcome.encode()[:4000])
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()  # the child's socket timeouts bound this
    os.waitpid(pid, 0)
    return outcome


def other_user_client(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(str(path))
        except PermissionError:
            return "PermissionError on connect"
        try:
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            return "closed"
        return "closed" if not answer else f"answered: {answer[:100]!r}"


@pytest.mark.skipif(os.geteuid() != 0, reason="running a client as another user needs root")
def test_another_user_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    # Not in tmp_path: pytest's base directory is private, and this test needs one that the
    # other user can walk through, to reach each of the checks in turn.
    base = Path(tempfile.mkdtemp(prefix="cs-control-", dir="/tmp"))
    try:
        os.chmod(base, 0o711)
        path = base / "run" / "control.sock"
        with serving(path):
            # The private directory keeps the other user out...
            assert as_other_user(path) == "PermissionError on connect"
            # ... and so does the socket's own mode...
            os.chmod(path.parent, 0o711)
            assert as_other_user(path) == "PermissionError on connect"
            # ... and should both be opened by mistake, the server checks who is calling.
            os.chmod(path, 0o666)
            caplog.set_level(logging.WARNING, logger="commonsyncd.control")
            assert as_other_user(path) == "closed"
            assert f"another user (uid {NOBODY})" in caplog.text
            assert_still_serving(path)  # its own user still gets answers
    finally:
        shutil.rmtree(base, ignore_errors=True)
