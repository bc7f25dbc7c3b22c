"""The short join codes a device holds open for people it invited (SPEC.md §15.10).

A code lives in memory only, on the inviting device, while that device runs: it is a way to
hand over an invitation's link to someone reading the code off a phone call, not a second
invitation. It ends when it is redeemed once, when its time is up (:data:`CODE_LIFETIME` at
most, the invitation's own expiry if sooner), when its invitation is revoked, or when
:data:`~commonsync.membership.codes.MAX_FAILURES` attempts were wrong. Attempts are reserved
before the PAKE starts, so that a guesser opening many channels at once still gets only that
many guesses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..membership.codes import MAX_FAILURES, MAX_NAMEPLATE, JoinCode

#: The longest a code stays open: the person invited is expected on the phone meanwhile.
CODE_LIFETIME = 3600.0
#: Codes one device holds open at once.
MAX_OPEN_CODES = 64


@dataclass(eq=False)
class OpenCode:
    code: JoinCode = field(repr=False)
    link: str = field(repr=False)
    folder: str
    invitation: bytes
    expires: float
    #: Where the nameplate is held besides the LAN: the relay's name, and its ID.
    relay: tuple[str, bytes] | None = None
    failures: int = 0
    attempts: int = 0  # in flight

    @property
    def nameplate(self) -> int:
        return self.code.nameplate

    @property
    def attempts_left(self) -> int:
        return MAX_FAILURES - self.failures - self.attempts


class OpenCodes:
    """The device's open codes, by nameplate; every method is cheap and never waits."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._codes: dict[int, OpenCode] = {}
        #: Codes closed since the owner last took them: their relay claims are to release.
        self.closed: list[OpenCode] = []

    def free_nameplate(self) -> int:
        """The smallest nameplate this device does not hold (LAN-only codes)."""
        self.sweep()
        return next(n for n in range(1, MAX_NAMEPLATE + 1) if n not in self._codes)

    def holds(self, nameplate: int) -> bool:
        self.sweep()
        return nameplate in self._codes

    def open(self, opened: OpenCode) -> OpenCode:
        self.sweep()
        if opened.nameplate in self._codes:
            raise ValueError(f"nameplate {opened.nameplate} is already open")
        if len(self._codes) >= MAX_OPEN_CODES:
            oldest = min(self._codes.values(), key=lambda c: c.expires)
            self._close(oldest)
        self._codes[opened.nameplate] = opened
        return opened

    def begin(self, nameplate: int) -> OpenCode | None:
        """Reserve one attempt at the code at ``nameplate``: None if there is no such code
        open, or no attempt left for it (all in flight or spent)."""
        self.sweep()
        opened = self._codes.get(nameplate)
        if opened is None or opened.attempts_left <= 0:
            return None
        opened.attempts += 1
        return opened

    def end(self, opened: OpenCode, outcome: str) -> int:
        """An attempt is over: ``right`` (the code is redeemed and closes), ``wrong`` (one
        failure more; the code closes at the last) or ``abandoned`` (the joiner left before
        proving anything: no guess was made). The attempts left."""
        opened.attempts -= 1
        if outcome == "right":
            self._close(opened)
            return 0
        if outcome == "wrong":
            opened.failures += 1
            if opened.failures >= MAX_FAILURES:
                self._close(opened)
        elif outcome != "abandoned":
            raise ValueError(f"unknown outcome {outcome!r}")
        return max(0, opened.attempts_left)

    def invitations(self) -> set[bytes]:
        """The invitations of the codes open now."""
        self.sweep()
        return {c.invitation for c in self._codes.values()}

    def close_invitation(self, invitation: bytes) -> None:
        for opened in [c for c in self._codes.values() if c.invitation == invitation]:
            self._close(opened)

    def sweep(self) -> None:
        now = self._clock()
        for opened in [c for c in self._codes.values() if c.expires <= now]:
            self._close(opened)

    def listing(self) -> list[dict[str, Any]]:
        """The open codes as ``members`` shows them (never the words: only the inviter's
        screen shows a code, once)."""
        self.sweep()
        return [
            {
                "nameplate": c.nameplate,
                "folder": c.folder,
                "invitation": c.invitation.hex()[:16],
                "until": int(c.expires),
                "attempts_left": c.attempts_left,
                "relay": c.relay[0] if c.relay else None,
            }
            for c in sorted(self._codes.values(), key=lambda c: c.nameplate)
        ]

    def _close(self, opened: OpenCode) -> None:
        if self._codes.get(opened.nameplate) is opened:
            del self._codes[opened.nameplate]
            self.closed.append(opened)
