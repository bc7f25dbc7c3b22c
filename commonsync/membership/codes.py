"""Short join codes: an invitation read out over the phone (SPEC.md §15.10).

    7-guitar-orbit

A code is a *nameplate*, a small number that says where the inviting device waits (a relay
holds it for the inviter's control connection; on the LAN the inviter answers it), and two
words from :data:`WORDS`: 256 words, so 16 bits that a guesser must find. The joiner and the
inviting device run SPAKE2 (symmetric, the ``spake2`` package's Ed25519 group) with the whole
code as the password, inside a channel (SPEC.md §10), then each proves that it derived the
same key, bound to that channel's handshake hash. Nothing seen on the wire, at the relay or
by a device in the middle tells a guess from the right code, so each guess costs an online
attempt, which the inviting device counts: after :data:`MAX_FAILURES` wrong ones the code is
void. The proven channel then carries the invitation's link (:mod:`.links`), and the join
goes on as with a link.

Nothing here does I/O: :mod:`commonsync.node.joining` runs the conversation.
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from spake2 import SPAKE2_Symmetric  # type: ignore[import-untyped]
from spake2.ed25519_basic import NotOnCurve  # type: ignore[import-untyped]
from spake2.spake2 import SPAKEError  # type: ignore[import-untyped]

from ..errors import MembershipError

#: Nameplates run from 1 to this (a relay gives the smallest free one: codes stay short).
MAX_NAMEPLATE = 9999
#: Wrong attempts an inviting device accepts for one code before it voids the code.
MAX_FAILURES = 3
#: SPAKE2's identity for this protocol: a code is never a password for anything else.
PAKE_ID = b"commonsync join code v1"
#: A SPAKE2 message: a side byte and a point.
PAKE_MESSAGE_SIZE = 33
#: The first byte of every symmetric SPAKE2 message.
SIDE = b"S"
PROOF_SIZE = 32

WORDS: tuple[str, ...] = tuple(
    """
    acorn actor adobe agent album alpine amber anchor angle ankle apple apron arena arrow aspen
    atlas autumn avocado bagel baker balcony bamboo banjo barley basket beacon bicycle bison
    blanket blossom bonfire border bottle branch breeze bridge bronze bucket buffalo bundle
    butter cabin cactus camel canal candle canyon carrot castle cedar cello chalk chess chimney
    cinema circus citrus clover cobalt coconut comet copper coral cotton crater cricket crystal
    cupboard curtain cycle daisy dancer delta desert diamond dolphin donkey dragon drum eagle
    easel echo eclipse elbow ember engine falcon feather fennel ferry fiddle finch fjord flute
    forest fossil fountain fox galaxy garden geyser ginger glacier globe goblet grape guitar
    hammock harbor hazel helmet heron hickory honey horizon hummus iceberg igloo indigo island
    ivory jacket jaguar jasmine jelly jigsaw jungle kayak kernel kettle kiwi ladder lagoon
    lantern lava lemon lentil lettuce library lily linen lobster locket lotus magnet mango maple
    marble meadow melon meteor mint mirror mitten monsoon mosaic muffin mustard napkin nectar
    needle noodle nutmeg oasis oboe ocean olive onion opera orbit orchard otter oyster paddle
    pancake panda papaya parrot pebble pelican pepper piano pickle pigeon pillow pine planet
    plum pocket polka poppy potato prairie pretzel pumpkin puzzle quartz quill rabbit radish
    raisin raven ribbon river robin rocket saddle saffron salmon sandal satchel scarf seagull
    sesame shovel silver sketch sled sparrow spinach sponge squash squirrel starfish statue
    stove sunset swan tablet tango teapot temple thimble thunder tiger timber tomato topaz
    tractor trumpet tulip tundra turnip turtle umbrella valley velvet violin volcano waffle
    walnut walrus whistle willow window zebra
    """.split()  # noqa: SIM905 (a paragraph of words reads better than 256 lines)
)
assert len(set(WORDS)) == len(WORDS) == 256
_INDEX = {word: i for i, word in enumerate(WORDS)}


class CodeError(MembershipError):
    """The text is not a join code, or a word in it is not one of the code words."""


@dataclass(frozen=True)
class JoinCode:
    nameplate: int
    words: tuple[str, str]

    @classmethod
    def generate(cls, nameplate: int) -> JoinCode:
        """A new code at nameplate with two words drawn by the system's CSPRNG."""
        if not 1 <= nameplate <= MAX_NAMEPLATE:
            raise CodeError(f"a nameplate is between 1 and {MAX_NAMEPLATE}, not {nameplate}")
        return cls(nameplate, (secrets.choice(WORDS), secrets.choice(WORDS)))

    @classmethod
    def parse(cls, text: str) -> JoinCode:
        """Read a code as a person types it: any case, words separated by ``-`` or spaces.
        A misspelt word gets a suggestion, so that the person can retry without spending one
        of the inviter's :data:`MAX_FAILURES` attempts."""
        parts = [p for p in re.split(r"[\s\-]+", text.strip().lower()) if p]
        if len(parts) != 3 or not (parts[0].isascii() and parts[0].isdigit()):
            raise CodeError(
                f"{text.strip()[:40]!r} is not a join code: a code is a number and two words, "
                "like 7-guitar-orbit"
            )
        nameplate = int(parts[0])
        if not 1 <= nameplate <= MAX_NAMEPLATE:
            raise CodeError(f"a join code starts with a number from 1 to {MAX_NAMEPLATE}")
        for place, word in zip(("first", "second"), parts[1:], strict=True):
            if word not in _INDEX:
                close = difflib.get_close_matches(word, WORDS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise CodeError(f"the code's {place} word, {word[:20]!r}, is not a code word{hint}")
        return cls(nameplate, (parts[1], parts[2]))

    def __str__(self) -> str:
        return f"{self.nameplate}-{self.words[0]}-{self.words[1]}"


def looks_like_code(text: str) -> bool:
    """Whether ``text`` is meant as a code rather than a link (it starts with a number)."""
    return bool(re.match(r"\s*\d+[\s\-]", text))


class CodePake:
    """One side's SPAKE2 run for a code. Both sides play the same symmetric role."""

    def __init__(self, code: JoinCode, *, entropy: Callable[[int], bytes] = os.urandom) -> None:
        self._spake = SPAKE2_Symmetric(str(code).encode(), idSymmetric=PAKE_ID, entropy_f=entropy)
        self._message: bytes = self._spake.start()

    @property
    def message(self) -> bytes:
        """This side's message, to send to the other side."""
        return self._message

    def finish(self, peer_message: bytes, handshake_hash: bytes) -> CodeKeys:
        """The keys both sides hold if (and only if) they typed the same code; a message that
        is malformed (or our own, reflected) is a :class:`CodeError`."""
        # Checked here, not left to the package: it checks the side byte with an assert.
        if len(peer_message) != PAKE_MESSAGE_SIZE or peer_message[:1] != SIDE:
            raise CodeError(f"a code message is {SIDE!r} and a point, {PAKE_MESSAGE_SIZE} bytes")
        try:
            key: bytes = self._spake.finish(peer_message)
        except (SPAKEError, ValueError, NotOnCurve) as exc:  # NotOnCurve is no ValueError
            raise CodeError(f"the other side's code message is invalid: {exc}") from None
        return CodeKeys(key, handshake_hash)


@dataclass(frozen=True, repr=False)
class CodeKeys:
    key: bytes
    handshake_hash: bytes

    def proof(self, role: str) -> bytes:
        """What role (``joiner`` or ``member``) sends to prove it holds the key, bound
        to this channel: a proof made on another channel (a relay in the middle) is worth
        nothing here."""
        if role not in ("joiner", "member"):
            raise ValueError(f"unknown role {role!r}")
        data = b"commonsync code proof " + role.encode() + b"\x00" + self.handshake_hash
        return hashlib.blake2b(data, key=self.key, digest_size=PROOF_SIZE).digest()

    def check(self, role: str, proof: bytes) -> bool:
        return hmac.compare_digest(self.proof(role), proof)


__all__ = [
    "MAX_FAILURES",
    "MAX_NAMEPLATE",
    "PAKE_ID",
    "WORDS",
    "CodeError",
    "CodeKeys",
    "CodePake",
    "JoinCode",
    "looks_like_code",
]
