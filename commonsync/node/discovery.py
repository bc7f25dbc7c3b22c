"""LAN discovery: find the other devices on the local network through DNS-SD over mDNS.

Each device announces a ``_commonsync._tcp`` service that carries its device ID (TXT ``id=``)
and the TCP port it listens on, and nothing else: folder names or IDs never leave the device
this way. What others announce is only a hint of where to dial; the Noise handshake decides
who a device is, so a forged announcement costs a failed connection, nothing more. It is
still hostile input: malformed announcements are skipped, and how many are kept or resolved
at once is bounded.

python-zeroconf is synchronous and runs its own asyncio loop in a thread. We never call its
blocking methods from our event loop (trio or asyncio, through anyio): registering (which
probes the network for ~1.7 s) and resolving run as coroutines on zeroconf's loop that we wait
for and cancel, and the browser thread hands its events to our loop, waiting only for the
loop to take them (a bounded buffer, never for the work they cause).

Zeroconf is always given the interfaces explicitly: by default it would announce on every
interface of the machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream
from zeroconf import (
    BadTypeInNameException,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

from ..errors import DeviceIdError
from ..formats.device_id import DeviceId

log = logging.getLogger(__name__)

SERVICE_TYPE = "_commonsync._tcp.local."
#: How long to ask for a service's records when its announcement left some out (ms).
RESOLVE_TIMEOUT_MS = 3000
#: Services resolved at once; a LAN peer can announce any number of names.
MAX_RESOLVING = 16
#: Browser events waiting for our event loop; beyond that they are dropped.
EVENT_BUFFER = 256
#: Services whose last sighting is remembered, so that only changes are reported.
MAX_REMEMBERED = 1024

_T = TypeVar("_T")


@dataclass(frozen=True)
class Sighting:
    """Another device announced on the LAN: where it says it can be dialled."""

    device_id: DeviceId
    addresses: tuple[str, ...]
    port: int


class LanDiscovery:
    """Announce this device and report the other devices announced on the given interfaces."""

    def __init__(self, device_id: DeviceId, port: int, interfaces: Sequence[str]) -> None:
        if isinstance(interfaces, str):
            raise TypeError("interfaces is a sequence of IP addresses, not one string")
        if not interfaces:
            raise ValueError(
                "LAN discovery needs at least one interface address: with none, zeroconf "
                "would announce on every interface (to turn discovery off, do not run it)"
            )
        addresses = []
        for interface in interfaces:
            try:
                addresses.append(str(ipaddress.ip_address(interface)))
            except ValueError:
                raise ValueError(
                    f"LAN discovery interfaces are IP addresses, not {interface!r}"
                ) from None
        if not 0 < port < 65536:
            raise ValueError(f"not a TCP port: {port}")
        self.device_id = device_id
        self.port = port
        self.interfaces: tuple[str, ...] = tuple(addresses)

    def _announcement(self) -> ServiceInfo:
        """Our own announcement: the short device ID names it, the TXT record carries the ID."""
        short = self.device_id.short_str
        return ServiceInfo(
            SERVICE_TYPE,
            f"{short}.{SERVICE_TYPE}",
            port=self.port,
            properties={"id": str(self.device_id)},
            server=f"commonsync-{short}.local.",
            parsed_addresses=list(self.interfaces),
        )

    async def run(
        self,
        on_sighting: Callable[[Sighting], None],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Announce and browse until cancelled; calls on_sighting (in our loop) for every
        other device seen or updated. Unregisters and closes zeroconf on cancellation.

        Reports ``started`` once the announcement went out, that is, once other devices can
        find us; others may be reported before that.
        """
        try:
            zc = await anyio.to_thread.run_sync(
                partial(Zeroconf, interfaces=list(self.interfaces), use_asyncio=False)
            )
        except OSError as exc:  # such as ENODEV for an address that no interface has
            raise OSError(
                exc.errno, f"no LAN discovery on {', '.join(self.interfaces)}: {exc.strerror}"
            ) from exc
        # No checkpoint between here and the `try`: zeroconf's thread must always be closed.
        browser: ServiceBrowser | None = None
        try:
            listener = _Listener(self.device_id, zc, on_sighting)
            browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[listener.on_state_change])
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(listener.watch)
                info = self._announcement()
                await _run_on_loop(zc, _register(zc, info))
                log.info(
                    "announcing %s as %r on %s, port %d",
                    self.device_id.short_str,
                    info.name,
                    ", ".join(self.interfaces),
                    self.port,
                )
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_close, zc, browser)


class _Listener:
    """The browser's events, from zeroconf's thread into our loop, and from names to
    sightings."""

    def __init__(
        self, own_id: DeviceId, zc: Zeroconf, on_sighting: Callable[[Sighting], None]
    ) -> None:
        self._own_id = own_id
        self._zc = zc
        self._on_sighting = on_sighting
        self._token = anyio.lowlevel.current_token()
        self._send, self._receive = anyio.create_memory_object_stream[
            tuple[str, ServiceStateChange]
        ](EVENT_BUFFER)
        self._resolving: set[str] = set()
        self._reported: dict[str, Sighting] = {}

    def on_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Called in the browser's thread: hand the event to our loop (which only queues it)."""
        _call_soon(self._token, self._enqueue, self._send, name, state_change)

    @staticmethod
    def _enqueue(
        send: MemoryObjectSendStream[tuple[str, ServiceStateChange]],
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        try:
            send.send_nowait((name, state_change))
        except anyio.WouldBlock:
            log.debug("LAN discovery is behind, dropping an event about %r", name)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def watch(self) -> None:
        """Turn the browser's events into sightings, until cancelled."""
        async with anyio.create_task_group() as tasks:
            with self._receive:
                async for name, state_change in self._receive:
                    if state_change is ServiceStateChange.Removed:
                        self._reported.pop(name, None)
                        continue
                    try:
                        info = ServiceInfo(SERVICE_TYPE, name)
                    except BadTypeInNameException:
                        log.debug("ignoring a LAN announcement with a malformed name %r", name)
                        continue
                    # Announcements carry all their records: usually they are already here.
                    if info.load_from_cache(self._zc):
                        self._consider(name, info)
                    elif name in self._resolving:
                        pass
                    elif len(self._resolving) >= MAX_RESOLVING:
                        log.debug("too many LAN announcements to resolve, skipping %r", name)
                    else:
                        self._resolving.add(name)
                        tasks.start_soon(self._resolve, name, info)

    async def _resolve(self, name: str, info: ServiceInfo) -> None:
        try:
            complete = await _run_on_loop(
                self._zc, info.async_request(self._zc, RESOLVE_TIMEOUT_MS)
            )
        finally:
            self._resolving.discard(name)
        if complete:
            self._consider(name, info)
        else:
            log.debug("LAN announcement %r did not answer with its address and ID", name)

    def _consider(self, name: str, info: ServiceInfo) -> None:
        try:
            sighting = _read_sighting(info)
        except ValueError as exc:
            log.debug("ignoring LAN announcement %r: %s", name, exc)
            return
        if sighting.device_id == self._own_id or self._reported.get(name) == sighting:
            return
        self._reported.pop(name, None)
        if len(self._reported) >= MAX_REMEMBERED:
            del self._reported[next(iter(self._reported))]
        self._reported[name] = sighting
        log.debug("LAN: %s at %s port %d", sighting.device_id, sighting.addresses, sighting.port)
        self._on_sighting(sighting)


def _read_sighting(info: ServiceInfo) -> Sighting:
    """What a resolved announcement says, or ValueError saying why it makes no sense."""
    raw_id = info.properties.get(b"id")
    if raw_id is None:
        raise ValueError("no device ID")
    try:
        device_id = DeviceId.parse(raw_id.decode("ascii"))
    except (UnicodeDecodeError, DeviceIdError) as exc:
        raise ValueError(f"bad device ID {raw_id[:80]!r}: {exc}") from None
    if not info.port:
        raise ValueError("no port")
    addresses = tuple(info.parsed_scoped_addresses())
    if not addresses:
        raise ValueError("no address")
    return Sighting(device_id, addresses, info.port)


async def _register(zc: Zeroconf, info: ServiceInfo) -> None:
    """Probe for the name (renaming on a clash), then wait for the announcements to go out."""
    announcements = await zc.async_register_service(info, allow_name_change=True)
    await announcements


async def _run_on_loop(zc: Zeroconf, coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine on zeroconf's asyncio loop and wait for it without blocking ours.

    Cancelling our task cancels the coroutine, so that neither probing nor resolving holds
    up a shutdown.
    """
    assert zc.loop is not None
    token = anyio.lowlevel.current_token()
    done = anyio.Event()

    def wake(_: concurrent.futures.Future[_T]) -> None:
        _call_soon(token, done.set)

    future = asyncio.run_coroutine_threadsafe(coroutine, zc.loop)
    future.add_done_callback(wake)
    try:
        await done.wait()
    finally:
        future.cancel()
    return future.result()


def _close(zc: Zeroconf, browser: ServiceBrowser | None) -> None:
    """Blocking: stop browsing, say goodbye for our service (~0.25 s), stop zeroconf's thread."""
    if browser is not None:
        browser.cancel()
    zc.close()


def _call_soon(
    token: anyio.lowlevel.EventLoopToken, function: Callable[..., None], *args: Any
) -> None:
    """From one of zeroconf's threads: run ``function`` (quick, never raising) in our event
    loop. Waits only until the loop ran it; once our loop has stopped, does nothing."""
    with contextlib.suppress(anyio.RunFinishedError):  # our loop is gone: nobody listens
        anyio.from_thread.run_sync(function, *args, token=token)
