"""A two-host LAN for tests: two network namespaces joined by a veth pair.

Each namespace sees only its end of the cable and its own loopback, so multicast (mDNS uses
224.0.0.251) goes from one "host" to the other and nowhere else: tests can announce and
browse without touching the machine's real network. Creating namespaces needs root (or
CAP_NET_ADMIN and CAP_SYS_ADMIN); without them the tests that use :func:`lan` are skipped.

Names carry a random suffix, so that runs in parallel do not collide; a run killed before its
clean-up leaves namespaces called ``csync-*`` behind (``ip netns list``).

Use it from a test module with ``from tests.netns import lan``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest

#: Bound on each ``ip`` command: it never takes more than milliseconds when it works.
IP_TIMEOUT = 10.0
PREFIX_LENGTH = 24


class NetnsUnavailable(Exception):
    """This machine (or this user) cannot create network namespaces."""


@dataclass(frozen=True)
class Lan:
    """Two namespaces, ``ns_a`` at ``addr_a`` and ``ns_b`` at ``addr_b``, on one subnet."""

    ns_a: str
    ns_b: str
    addr_a: str
    addr_b: str
    link_a: str
    link_b: str

    def prefix(self, ns: str) -> list[str]:
        """The command prefix that runs a program inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns]


def _ip(*args: str) -> None:
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
        )
    except OSError as exc:
        raise NetnsUnavailable(f"cannot run `ip`: {exc}") from exc
    if done.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def _delete_namespace(ns: str) -> None:
    # Deleting a namespace destroys the veth end in it, and with it the other end.
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=IP_TIMEOUT, check=False)


@contextmanager
def two_host_lan() -> Iterator[Lan]:
    """Create the namespaces, and delete them on the way out whatever happened."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
    if os.geteuid() != 0:
        raise NetnsUnavailable("creating network namespaces needs root")
    suffix = secrets.token_hex(3)
    subnet = f"10.77.{secrets.randbelow(254) + 1}"
    lan = Lan(
        ns_a=f"csync-{suffix}-a",
        ns_b=f"csync-{suffix}-b",
        addr_a=f"{subnet}.1",
        addr_b=f"{subnet}.2",
        link_a=f"csv{suffix}a",  # interface names have at most 15 characters
        link_b=f"csv{suffix}b",
    )
    created: list[str] = []
    try:
        for ns in (lan.ns_a, lan.ns_b):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip(
            "link", "add", lan.link_a, "netns", lan.ns_a,
            "type", "veth", "peer", "name", lan.link_b, "netns", lan.ns_b,
        )  # fmt: skip
        ends = ((lan.ns_a, lan.link_a, lan.addr_a), (lan.ns_b, lan.link_b, lan.addr_b))
        for ns, link, address in ends:
            _ip("-n", ns, "address", "add", f"{address}/{PREFIX_LENGTH}", "dev", link)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", link, "up")
            # Multicast leaves through the interface the socket names; the route is for
            # programs that do not name one.
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", link)
        yield lan
    finally:
        for ns in created:
            _delete_namespace(ns)


@pytest.fixture
def lan() -> Iterator[Lan]:
    """A two-host LAN in network namespaces, or a skip saying why there cannot be one."""
    with ExitStack() as stack:
        try:
            network = stack.enter_context(two_host_lan())
        except NetnsUnavailable as exc:
            pytest.skip(f"no network namespaces: {exc}")
        yield network
