"""The control socket: how ``commonsync`` (or a script) talks to the running daemon.

Plain HTTP/1.1 with JSON bodies over a Unix socket, so that nothing beyond the standard tools
is needed to look inside::

    curl --unix-socket "$XDG_RUNTIME_DIR/commonsync/control.sock" http://localhost/status

(that is ``Home.socket_path``; with ``--home DIR`` it is ``DIR/control.sock``). This module
is only the transport: it knows nothing about folders or devices; the daemon plugs in a
:data:`Handler` (:class:`commonsyncd.api.ControlApi`). h11 parses HTTP strictly and does
no I/O; there is no server framework, so every limit is visible here.

Whoever can talk to this socket can share folders and accept devices, so only the daemon's own
user may: the socket's directory must be private (created 0700, refused if other users can
write to it or it belongs to someone else), the socket is created under a restrictive umask
and is 0600, and on Linux every connection's peer is checked with ``SO_PEERCRED`` as well, so
a mistaken ``chmod`` does not open it. A lock file next to the socket keeps a second daemon of
the same home from stealing it; a socket left by a dead daemon is replaced.

One request per connection (``Connection: close``, no keep-alive): the CLI makes a few requests
per command, and a connection with a bounded life keeps the server simple and robust. A bad
client never harms the daemon: the head (64 KiB) and the body (1 MiB) are bounded (431, 413),
malformed HTTP or JSON gets a 400, a client that does not finish its request within 10 s a
408, a handler's unexpected exception a logged 500; each connection is its own task.

Answers are JSON; errors are ``{"error": message, "hint": hint}`` with a 4xx or 5xx status. A
handler may return an async iterator (:data:`Stream`) instead, for endpoints such as
``GET /events``: it is sent as NDJSON (one JSON object per line, chunked) until the iterator
ends or the client goes away.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import stat
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import h11
import trio

from commonsync.errors import CommonsyncError

log = logging.getLogger(__name__)

#: Bounds on a request: its head (request line and headers) and its body.
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
#: Seconds a client has to send its whole request, and the daemon to hand over an answer.
REQUEST_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0
#: Connections served at once; more get a quick 503 (each one holds a file descriptor).
MAX_CONNECTIONS = 128
#: After an early error answer, how long unread request bytes are drained before closing, so
#: that closing with unread data does not reset the connection before the client reads it.
LINGER = 1.0
#: Bound on an answer the client accepts (a sanity check: the daemon is trusted).
MAX_ANSWER = 64 * 1024 * 1024
RECEIVE_SIZE = 16 * 1024

JSON_TYPE = "application/json"
NDJSON_TYPE = "application/x-ndjson"


class ControlError(CommonsyncError):
    """An error answer from the daemon: an HTTP status and a message a user can act on.

    A handler raises it to answer ``status`` with ``{"error": message, "hint": hint}``; the
    client raises it again from that answer. The client also raises it, with a 5xx status,
    when the daemon's answer is missing or broken (502) or late (504), and with 403 when the
    socket belongs to another user.
    """

    def __init__(self, status: int, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint


class DaemonNotRunningError(CommonsyncError):
    """Nothing answers on the control socket: the daemon is not running (or not yet)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.message = f"the daemon is not running (nothing answers at {socket_path})"
        self.hint = "start it with `commonsync daemon`"
        super().__init__(self.message)


class ControlSocketError(CommonsyncError):
    """The control socket cannot be set up safely: an unsafe directory, another daemon, ..."""


@dataclass(frozen=True)
class Request:
    """One request, as a handler sees it: ``path`` is decoded, ``body`` is parsed JSON (or
    None when there is no body); of a repeated query parameter the last one counts."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


#: What a handler may return for a streaming endpoint: each item is sent as one JSON line.
Stream = AsyncIterator[Any]
#: Answers a request with a JSON-able value (200) or a :data:`Stream`, or raises
#: :class:`ControlError`.
Handler = Callable[[Request], Awaitable[Any]]


# -- server ------------------------------------------------------------------------------------


async def serve_control(
    socket_path: Path,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``socket_path`` until cancelled; then close every connection and remove the
    socket file.

    Raises :class:`ControlSocketError` (before ``task_status.started()``) if the socket's
    directory is not private or another daemon already serves this path.
    """
    _prepare_directory(socket_path.parent)
    lock = _lock(socket_path)
    try:
        await _remove_stale_socket(socket_path)
        sock = _bind(socket_path)
        try:
            created = os.stat(socket_path)
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            server = _Server(handler)
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, server.connection, [listener])
                log.debug("control socket listening at %s", socket_path)
                task_status.started()
        finally:
            with contextlib.suppress(OSError):
                now = os.stat(socket_path)
                if (now.st_dev, now.st_ino) == (created.st_dev, created.st_ino):
                    os.unlink(socket_path)
            sock.close()
    finally:
        os.close(lock)


def _prepare_directory(directory: Path) -> None:
    """Create the socket's directory private, or check that an existing one is private.

    A directory other users can write to would let them swap the socket for their own and
    read what the CLI sends; one they own, likewise.
    """
    try:
        directory.mkdir(mode=0o700, parents=True)
        os.chmod(directory, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise ControlSocketError(
            f"cannot create the directory of the control socket {directory}: {exc.strerror}"
        ) from None
    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise ControlSocketError(f"{directory} must be a directory, for the control socket")
    if info.st_uid != os.geteuid():
        raise ControlSocketError(
            f"the control socket's directory {directory} belongs to another user "
            f"(uid {info.st_uid}); use a directory of your own (--home)"
        )
    if info.st_mode & 0o022:
        raise ControlSocketError(
            f"the control socket's directory {directory} is writable by other users, who "
            f"could replace the socket; make it private: chmod 700 {directory}"
        )


@contextlib.contextmanager
def daemon_lock(socket_path: Path) -> Iterator[None]:
    """Hold, for a moment, the lock a running daemon holds (:func:`serve_control`): for work
    at start that must not happen under another daemon of the same home (setting its index
    aside). Raises :class:`ControlSocketError` if another daemon runs."""
    _prepare_directory(socket_path.parent)
    fd = _lock(socket_path)
    try:
        yield
    finally:
        os.close(fd)


def _lock(socket_path: Path) -> int:
    """Hold a lock beside the socket for the daemon's life, so that two daemons starting at
    once cannot both decide the socket is stale and take it from each other."""
    lock_path = socket_path.with_name(socket_path.name + ".lock")
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(lock_path, flags, 0o600)
    except OSError as exc:
        raise ControlSocketError(f"cannot open {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _already_running(socket_path) from None
    except OSError as exc:
        os.close(fd)
        raise ControlSocketError(f"cannot lock {lock_path}: {exc.strerror}") from None
    return fd


def _already_running(socket_path: Path) -> ControlSocketError:
    return ControlSocketError(
        f"another daemon is already running with this home (it answers at {socket_path}); "
        "stop it first, or use another --home"
    )


async def _remove_stale_socket(socket_path: Path) -> None:
    """Remove a socket left by a daemon that died; refuse if something still answers on it,
    and never remove something that is not a socket."""
    try:
        info = os.lstat(socket_path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlSocketError(
            f"{socket_path} exists and is not a socket; move it away so the daemon can "
            "create its control socket there"
        )
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            with trio.fail_after(2.0):
                await probe.connect(str(socket_path))
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listens: stale
        except PermissionError:
            raise ControlSocketError(
                f"{socket_path} is a socket this user may not use; remove it"
            ) from None
        except (OSError, trio.TooSlowError):
            raise _already_running(socket_path) from None
        else:
            raise _already_running(socket_path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    log.info("replaced the stale control socket %s", socket_path)


def _bind(socket_path: Path) -> socket.socket:
    """A listening socket at ``socket_path`` that only its owner can use from the first
    instant: the umask applies at ``bind``, before the ``chmod``. (The umask belongs to the
    whole process, so it is changed only around the ``bind`` call.)"""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        previous = os.umask(0o177)
        try:
            sock.bind(str(socket_path))
        finally:
            os.umask(previous)
        os.chmod(socket_path, 0o600)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise _already_running(socket_path) from None
        raise ControlSocketError(
            f"cannot create the control socket {socket_path}: {exc.strerror}"
        ) from None
    return sock


def _peer_uid(sock: trio.socket.SocketType) -> int | None:
    """The user ID of the process at the other end (Linux), or None where it is unknown."""
    if sys.platform == "linux":
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    return None


class _ClientGone(Exception):
    """The client closed the connection before its request was complete."""


class _Server:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._active = 0

    async def connection(self, stream: trio.SocketStream) -> None:
        """Serve one connection; nothing a client does escapes from here (the daemon goes on)."""
        try:
            async with stream:
                self._active += 1
                try:
                    await self._serve(stream)
                finally:
                    self._active -= 1  # before the close: the client may try again at once
        except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("a control client went away")
        except Exception:
            log.exception("control connection failed")

    async def _serve(self, stream: trio.SocketStream) -> None:
        uid = _peer_uid(stream.socket)
        if uid is not None and uid != os.geteuid():
            log.warning("refused a control connection from another user (uid %d)", uid)
            return
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        if self._active > MAX_CONNECTIONS:
            await _answer_early(stream, conn, 503, "the daemon has too many connections")
            return
        await self._exchange(stream, conn)

    async def _exchange(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                request = await _read_request(stream, conn)
        except trio.TooSlowError:
            await _answer_early(stream, conn, 408, "the request did not arrive in time")
            return
        except ControlError as exc:
            await _answer_early(stream, conn, exc.status, exc.message, exc.hint)
            return
        head_only = request.method == "HEAD"
        try:
            result = await self._handler(request)
        except ControlError as exc:
            status = exc.status if 400 <= exc.status <= 599 else 500
            await _answer(stream, conn, status, _error(exc.message, exc.hint), head_only)
            return
        except Exception:
            log.exception("control request %s %s failed", request.method, request.path)
            await _answer(stream, conn, 500, _INTERNAL, head_only)
            return
        if isinstance(result, AsyncIterator):
            await _stream(stream, conn, result, head_only)
            return
        try:
            body = _encode(result)
        except (TypeError, ValueError):
            log.exception("control request %s %s: answer is not JSON", request.method, request.path)
            await _answer(stream, conn, 500, _INTERNAL, head_only)
            return
        await _send_response(stream, conn, 200, body, head_only)


_INTERNAL = {
    "error": "the daemon failed to answer this request (an internal error)",
    "hint": "its log says more",
}


def _error(message: str, hint: str = "") -> dict[str, str]:
    return {"error": message, "hint": hint}


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> Request:
    """Read one whole request, within the size limits (raises :class:`ControlError`)."""
    head: h11.Request | None = None
    body = bytearray()
    received = 0  # before the head is complete
    too_large = ControlError(431, f"the request head is larger than {MAX_HEAD} bytes")
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise too_large from None
            raise ControlError(
                exc.error_status_hint, f"malformed HTTP request: {str(exc)[:200]}"
            ) from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_SIZE)
            received += len(data) if head is None else 0
            conn.receive_data(data)  # b"": end of stream
        elif isinstance(event, h11.Request):
            # h11 bounds a head that is still incomplete; this one arrived whole.
            if received - len(conn.trailing_data[0]) > MAX_HEAD:
                raise too_large
            head = event
            length = _content_length(event)
            if length is not None and length > MAX_BODY:
                raise ControlError(413, f"the request body is larger than {MAX_BODY} bytes")
            if conn.they_are_waiting_for_100_continue:  # curl, for larger bodies
                await stream.send_all(
                    conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                )
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise ControlError(413, f"the request body is larger than {MAX_BODY} bytes")
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            return _parse(head, bytes(body))
        else:  # ConnectionClosed (or anything unexpected) before a complete request
            raise _ClientGone


def _content_length(head: h11.Request) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked that it is a number
    return None


def _parse(head: h11.Request, raw: bytes) -> Request:
    target = urlsplit(head.target.decode("ascii", "replace"))
    body: Any = None
    if raw.strip():
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ControlError(
                400,
                f"the request body is not valid JSON: {exc}"[:300],
                hint='send a JSON document, e.g. -d \'{"folder": "photos"}\'',
            ) from None
    return Request(
        method=head.method.decode("ascii", "replace").upper(),
        path=unquote(target.path) or "/",
        query=dict(parse_qsl(target.query, keep_blank_values=True)),
        body=body,
    )


def _response(status: int, headers: list[tuple[str, str]]) -> h11.Response:
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return h11.Response(status_code=status, reason=reason, headers=headers)


async def _send_response(
    stream: trio.SocketStream, conn: h11.Connection, status: int, body: bytes, head_only: bool
) -> None:
    headers = [
        ("content-type", JSON_TYPE),
        ("content-length", str(len(body))),
        ("connection", "close"),
    ]
    data = conn.send(_response(status, headers))
    if not head_only:
        data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    with trio.move_on_after(SEND_TIMEOUT):
        await stream.send_all(data)


async def _answer(
    stream: trio.SocketStream, conn: h11.Connection, status: int, payload: Any, head_only: bool
) -> None:
    await _send_response(stream, conn, status, _encode(payload), head_only)


async def _answer_early(
    stream: trio.SocketStream, conn: h11.Connection, status: int, message: str, hint: str = ""
) -> None:
    """Answer an error before the request was read to its end, then close gracefully: stop
    sending, and drain (briefly) what the client still sends, so that it reads the answer
    instead of a connection reset."""
    await _answer(stream, conn, status, _error(message, hint), head_only=False)
    with trio.move_on_after(LINGER):
        await stream.send_eof()
        drained = 0
        while drained <= 4 * MAX_BODY:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                break
            drained += len(data)


async def _stream(
    stream: trio.SocketStream, conn: h11.Connection, items: Stream, head_only: bool
) -> None:
    """Send ``items`` as NDJSON until they end or the client goes away (then stop them)."""
    try:
        headers = [
            ("content-type", NDJSON_TYPE),
            ("cache-control", "no-store"),
            ("connection", "close"),
        ]
        await stream.send_all(conn.send(_response(200, headers)))
        if head_only:
            await stream.send_all(conn.send(h11.EndOfMessage()))
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_hangup, stream, nursery.cancel_scope)
                async for item in items:
                    await stream.send_all(conn.send(h11.Data(data=_encode(item) + b"\n")))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("a control client left its stream")
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            with trio.move_on_after(SEND_TIMEOUT, shield=True):
                await aclose()


async def _watch_hangup(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client closes its end (bytes it sends meanwhile are ignored):
    a stream that waits for the next event would otherwise never notice."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some(RECEIVE_SIZE):
            pass
    scope.cancel()


# -- client ------------------------------------------------------------------------------------


class ControlClient:
    """The CLI's side: blocking, one connection per request.

    ``timeout`` bounds each wait on the socket (connecting, sending, each read of the answer),
    not the whole exchange; a stream waits for its next item as long as it takes.
    """

    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request and return the answer's JSON; raise :class:`ControlError` for an
        error answer, :class:`DaemonNotRunningError` when nothing listens."""
        with self._exchange(method, path, body) as (sock, conn, response):
            return self._json(response, self._read_body(sock, conn))

    def stream(self, path: str) -> Generator[Any, None, None]:
        """``GET path`` and yield each JSON line of the answer as it arrives, until the daemon
        ends the stream; ``close()`` closes the connection, which stops the stream there."""
        with self._exchange("GET", path, None) as (sock, conn, response):
            if response.status_code >= 300:
                self._json(response, self._read_body(sock, conn))  # raises
            sock.settimeout(None)
            pending = b""
            while True:
                event = self._next_event(sock, conn)
                if isinstance(event, h11.Data):
                    pending += event.data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield self._decode(line)
                    if len(pending) > MAX_ANSWER:
                        raise ControlError(502, "the daemon sent an endless line")
                elif isinstance(event, h11.EndOfMessage):
                    if pending.strip():
                        yield self._decode(pending)
                    return

    @contextlib.contextmanager
    def _exchange(
        self, method: str, path: str, body: Any
    ) -> Iterator[tuple[socket.socket, h11.Connection, h11.Response]]:
        """Connect, send the request, read the answer's head; errors become ours."""
        sock = self._connect()
        try:
            conn = h11.Connection(h11.CLIENT)
            payload = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
            headers = [
                ("host", "localhost"),
                ("accept", JSON_TYPE),
                ("connection", "close"),
                ("content-length", str(len(payload))),
            ]
            if body is not None:
                headers.append(("content-type", JSON_TYPE))
            target = quote(path, safe="/?&=%:@!$'()*+,;~-._")
            data = conn.send(h11.Request(method=method, target=target, headers=headers))
            data += conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage())
            # The daemon may answer early (a request too large) and close; its answer is
            # still there to read.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)
            while True:
                event = self._next_event(sock, conn)
                if isinstance(event, h11.Response):
                    break
            yield sock, conn, event
        except TimeoutError:
            raise ControlError(
                504,
                f"the daemon did not answer within {self.timeout:g} s",
                hint="it may be busy or stuck; its log says more",
            ) from None
        except OSError as exc:
            raise ControlError(
                502, f"the connection to the daemon broke: {exc.strerror or exc}"
            ) from None
        finally:
            sock.close()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            sock.close()
            raise DaemonNotRunningError(self.socket_path) from None
        except PermissionError:
            sock.close()
            raise ControlError(
                403,
                f"no permission to use the control socket {self.socket_path}",
                hint="it belongs to another user; run commonsync as that user, or use --home",
            ) from None
        except TimeoutError:
            sock.close()
            raise ControlError(
                504, f"the daemon at {self.socket_path} does not accept connections"
            ) from None
        except OSError as exc:
            sock.close()
            raise ControlError(
                502, f"cannot connect to {self.socket_path}: {exc.strerror or exc}"
            ) from None
        return sock

    def _next_event(self, sock: socket.socket, conn: h11.Connection) -> h11.Event:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ControlError(
                    502, f"the daemon's answer is not valid HTTP (or was cut short): {exc}"
                ) from None
            if event is h11.NEED_DATA:
                try:
                    conn.receive_data(sock.recv(RECEIVE_SIZE))
                except ConnectionResetError:
                    conn.receive_data(b"")
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                raise ControlError(502, "the daemon closed the connection without an answer")
            assert isinstance(event, h11.Event)
            return event

    def _read_body(self, sock: socket.socket, conn: h11.Connection) -> bytes:
        body = bytearray()
        while True:
            event = self._next_event(sock, conn)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_ANSWER:
                    raise ControlError(502, "the daemon's answer is too large")
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)

    def _json(self, response: h11.Response, body: bytes) -> Any:
        """The answer's JSON, or :class:`ControlError` for an error status."""
        status = response.status_code
        try:
            value = json.loads(body) if body.strip() else None
        except ValueError:
            if status >= 400:
                raise ControlError(status, f"the daemon answered {status}") from None
            raise ControlError(502, "the daemon's answer is not JSON") from None
        if status >= 300:
            if isinstance(value, dict) and isinstance(value.get("error"), str):
                raise ControlError(status, value["error"], str(value.get("hint") or ""))
            raise ControlError(status, f"the daemon answered {status}")
        return value

    def _decode(self, line: bytes) -> Any:
        try:
            return json.loads(line)
        except ValueError:
            raise ControlError(502, "the daemon sent a line that is not JSON") from None
