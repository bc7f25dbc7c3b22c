"""The Noise Protocol Framework (revision 34), for the suite ``25519_ChaChaPoly_BLAKE2b``.

A sans-IO handshake state machine on PyNaCl's libsodium bindings: :class:`HandshakeState`
turns payloads into handshake messages and back, and :meth:`HandshakeState.split` hands over
the two transport keys. The channel (:mod:`commonsync.wire.channel`) uses ``XX``; every pattern of
the specification's tables (fundamental, one-way, deferred, and the ``pskN`` modifiers) is
here because the table costs nothing and the published vectors test them all.

Names follow the specification (``ck``, ``h``, ``MixKey``…) so that the code can be read
beside it: https://noiseprotocol.org/noise.html
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaclRuntimeError

from ..errors import HandshakeError

DHLEN = 32
HASHLEN = 64
TAGLEN = 16
#: Noise's limit on any message, handshake or transport.
MAX_MESSAGE_LEN = 65535
_MAX_NONCE = 2**64 - 1
_SUITE = "25519_ChaChaPoly_BLAKE2b"


# -- patterns ----------------------------------------------------------------------------------

#: Each pattern: pre-messages ("initiator; responder", tokens "e"/"s") and the message
#: patterns, alternating initiator → responder, responder → initiator, … (spec §7, §18).
_PATTERNS: dict[str, tuple[str, tuple[str, ...]]] = {
    # one-way (§7.4)
    "N": ("; s", ("e, es",)),
    "K": ("s; s", ("e, es, ss",)),
    "X": ("; s", ("e, es, s, ss",)),
    # interactive, fundamental (§7.5)
    "NN": (";", ("e", "e, ee")),
    "NK": ("; s", ("e, es", "e, ee")),
    "NX": (";", ("e", "e, ee, s, es")),
    "KN": ("s;", ("e", "e, ee, se")),
    "KK": ("s; s", ("e, es, ss", "e, ee, se")),
    "KX": ("s;", ("e", "e, ee, se, s, es")),
    "XN": (";", ("e", "e, ee", "s, se")),
    "XK": ("; s", ("e, es", "e, ee", "s, se")),
    "XX": (";", ("e", "e, ee, s, es", "s, se")),
    "IN": (";", ("e, s", "e, ee, se")),
    "IK": ("; s", ("e, es, s, ss", "e, ee, se")),
    "IX": (";", ("e, s", "e, ee, se, s, es")),
    # deferred (§18.1)
    "NK1": ("; s", ("e", "e, ee, es")),
    "NX1": (";", ("e", "e, ee, s", "es")),
    "X1N": (";", ("e", "e, ee", "s", "se")),
    "X1K": ("; s", ("e, es", "e, ee", "s", "se")),
    "XK1": ("; s", ("e", "e, ee, es", "s, se")),
    "X1K1": ("; s", ("e", "e, ee, es", "s", "se")),
    "X1X": (";", ("e", "e, ee, s, es", "s", "se")),
    "XX1": (";", ("e", "e, ee, s", "es, s, se")),
    "X1X1": (";", ("e", "e, ee, s", "es, s", "se")),
    "K1N": ("s;", ("e", "e, ee", "se")),
    "K1K": ("s; s", ("e, es", "e, ee", "se")),
    "KK1": ("s; s", ("e", "e, ee, se, es")),
    "K1K1": ("s; s", ("e", "e, ee, es", "se")),
    "K1X": ("s;", ("e", "e, ee, s, es", "se")),
    "KX1": ("s;", ("e", "e, ee, se, s", "es")),
    "K1X1": ("s;", ("e", "e, ee, s", "se, es")),
    "I1N": (";", ("e, s", "e, ee", "se")),
    "I1K": ("; s", ("e, es, s", "e, ee", "se")),
    "IK1": ("; s", ("e, s", "e, ee, se, es")),
    "I1K1": ("; s", ("e, s", "e, ee, es", "se")),
    "I1X": (";", ("e, s", "e, ee, s, es", "se")),
    "IX1": (";", ("e, s", "e, ee, se, s", "es")),
    "I1X1": (";", ("e, s", "e, ee, s", "se, es")),
}

_NAME = re.compile(r"Noise_([A-Z1]+)((?:psk\d)(?:\+psk\d)*)?_(\w+)")


@dataclass(frozen=True)
class HandshakePattern:
    """A handshake pattern with its modifiers applied, ready to run."""

    name: str
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]
    psk_count: int

    @property
    def one_way(self) -> bool:
        return len(self.messages) == 1

    @classmethod
    def parse(cls, protocol_name: str) -> HandshakePattern:
        """The pattern of a full protocol name such as ``Noise_XX_25519_ChaChaPoly_BLAKE2b``."""
        match = _NAME.fullmatch(protocol_name)
        if match is None or match.group(3) != _SUITE:
            raise HandshakeError(f"unsupported Noise protocol {protocol_name!r}")
        base, modifiers = match.group(1), match.group(2) or ""
        if base not in _PATTERNS:
            raise HandshakeError(f"unknown Noise handshake pattern {base!r}")
        pre, written = _PATTERNS[base]
        initiator_pre, responder_pre = (
            tuple(t.strip() for t in side.split(",") if t.strip()) for side in pre.split(";")
        )
        messages = [[t.strip() for t in m.split(",")] for m in written]
        psks = [int(m[3:]) for m in modifiers.split("+") if m]
        for n in psks:
            if n == 0:
                messages[0].insert(0, "psk")
            elif n <= len(messages):
                messages[n - 1].append("psk")
            else:
                raise HandshakeError(f"{protocol_name}: psk{n} is past the last message")
        return cls(
            name=protocol_name,
            initiator_pre=initiator_pre,
            responder_pre=responder_pre,
            messages=tuple(tuple(m) for m in messages),
            psk_count=len(psks),
        )


# -- crypto functions (§4) ---------------------------------------------------------------------


def generate_keypair() -> tuple[bytes, bytes]:
    """A new X25519 key pair ``(private, public)``."""
    private = os.urandom(DHLEN)
    return private, crypto_scalarmult_base(private)


def public_key(private: bytes) -> bytes:
    return crypto_scalarmult_base(private)


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return crypto_scalarmult(private, public)
    except (CryptoError, NaclRuntimeError) as exc:
        # libsodium refuses a low-order point (all-zero shared secret): a hostile key.
        raise HandshakeError("the peer sent an invalid public key") from exc


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def _hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp, out2 + b"\x03")


def _nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


# -- state objects (§5) ------------------------------------------------------------------------


class CipherState:
    """A key and a counter nonce; encrypts with ChaCha20-Poly1305 (IETF, 96-bit nonce)."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key
        self.n = 0

    def has_key(self) -> bool:
        return self.key is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.key is None:
            return plaintext
        if self.n >= _MAX_NONCE:
            raise HandshakeError("nonce exhausted; the session must be rekeyed or ended")
        out = crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, ad, _nonce(self.n), self.key)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.key is None:
            return ciphertext
        if self.n >= _MAX_NONCE:
            raise HandshakeError("nonce exhausted; the session must be rekeyed or ended")
        try:
            out = crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, _nonce(self.n), self.key
            )
        except CryptoError as exc:
            raise HandshakeError("a handshake message failed authentication") from exc
        self.n += 1
        return out


class SymmetricState:
    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = _hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k[:32])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = _hkdf(self.ck, b"", 2)
        return CipherState(temp_k1[:32]), CipherState(temp_k2[:32])


#: A payload, or a function that makes it from the handshake hash just before the payload
#: is encrypted, so that the payload can sign the transcript it travels in.
Payload = bytes | Callable[[bytes], bytes]


class HandshakeState:
    """One side of one handshake. Call :meth:`write_message` and :meth:`read_message` in the
    order the pattern gives, then :meth:`split`.

    ``ephemeral`` fixes the ephemeral private key; only test vectors should pass it.
    """

    def __init__(
        self,
        protocol_name: str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        static: bytes | None = None,
        remote_static: bytes | None = None,
        psks: Sequence[bytes] = (),
        ephemeral: bytes | None = None,
    ) -> None:
        self.pattern = HandshakePattern.parse(protocol_name)
        self.initiator = initiator
        self._symmetric = SymmetricState(protocol_name.encode("ascii"))
        self._symmetric.mix_hash(prologue)
        self._s: bytes | None = None
        self._s_pub: bytes | None = None
        if static is not None:
            self.set_static(static)
        self._e: bytes | None = None
        self._e_pub: bytes | None = None
        self._fixed_e = ephemeral
        self.remote_static = remote_static
        self.remote_ephemeral: bytes | None = None
        if len(psks) != self.pattern.psk_count or any(len(p) != 32 for p in psks):
            raise HandshakeError(f"{protocol_name} needs {self.pattern.psk_count} 32-byte PSKs")
        self._psks = list(psks)
        self._message_index = 0
        #: The handshake hash just before the payload of the last message written or read.
        self.hash_before_payload = b""

        for pre, own in (
            (self.pattern.initiator_pre, initiator),
            (self.pattern.responder_pre, not initiator),
        ):
            for token in pre:
                if token != "s":
                    raise HandshakeError(f"unsupported pre-message token {token!r}")
                key = self._s_pub if own else self.remote_static
                if key is None:
                    whose = "our" if own else "the peer's"
                    raise HandshakeError(f"{protocol_name} needs {whose} static key in advance")
                self._symmetric.mix_hash(key)

    def set_static(self, private: bytes) -> None:
        """Choose our static key; allowed until the pattern has used it (e.g. XX's initiator
        may pick its key only once it knows whom it is talking to)."""
        if len(private) != DHLEN:
            raise HandshakeError("an X25519 private key is 32 bytes")
        self._s, self._s_pub = private, public_key(private)

    # -- progress ----------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._message_index >= len(self.pattern.messages)

    @property
    def our_turn(self) -> bool:
        """Whether the next handshake message is ours to write."""
        return (self._message_index % 2 == 0) == self.initiator

    @property
    def handshake_hash(self) -> bytes:
        return self._symmetric.h

    def _next_tokens(self, writing: bool) -> tuple[str, ...]:
        if self.finished:
            raise HandshakeError("the handshake is already finished")
        if writing != self.our_turn:
            raise HandshakeError(
                "out of turn: expected to " + ("read" if writing else "write") + " a message"
            )
        tokens = self.pattern.messages[self._message_index]
        self._message_index += 1
        return tokens

    # -- messages ----------------------------------------------------------------------------

    def write_message(self, payload: Payload = b"") -> bytes:
        out = bytearray()
        sym = self._symmetric
        for token in self._next_tokens(writing=True):
            if token == "e":
                if self._fixed_e is not None:
                    self._e, self._fixed_e = self._fixed_e, None
                    self._e_pub = public_key(self._e)
                else:
                    self._e, self._e_pub = generate_keypair()
                assert self._e_pub is not None
                out += self._e_pub
                sym.mix_hash(self._e_pub)
                if self.pattern.psk_count:  # §9.2: with PSKs, e also keys the cipher
                    sym.mix_key(self._e_pub)
            elif token == "s":
                if self._s_pub is None:
                    raise HandshakeError("this pattern needs our static key")
                out += sym.encrypt_and_hash(self._s_pub)
            elif token == "psk":
                sym.mix_key_and_hash(self._psks.pop(0))
            else:
                sym.mix_key(self._dh_token(token))
        self.hash_before_payload = sym.h
        body = payload(sym.h) if callable(payload) else payload
        out += sym.encrypt_and_hash(body)
        if len(out) > MAX_MESSAGE_LEN:
            raise HandshakeError(f"handshake message of {len(out)} bytes is over Noise's limit")
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE_LEN:
            raise HandshakeError(f"handshake message of {len(message)} bytes is over the limit")
        sym = self._symmetric
        view = memoryview(message)
        for token in self._next_tokens(writing=False):
            if token == "e":
                self.remote_ephemeral, view = self._take(view, DHLEN)
                sym.mix_hash(self.remote_ephemeral)
                if self.pattern.psk_count:  # §9.2: with PSKs, e also keys the cipher
                    sym.mix_key(self.remote_ephemeral)
            elif token == "s":
                size = DHLEN + (TAGLEN if sym.cipher.has_key() else 0)
                sealed, view = self._take(view, size)
                self.remote_static = sym.decrypt_and_hash(sealed)
            elif token == "psk":
                sym.mix_key_and_hash(self._psks.pop(0))
            else:
                sym.mix_key(self._dh_token(token))
        self.hash_before_payload = sym.h
        if sym.cipher.has_key() and len(view) < TAGLEN:
            raise HandshakeError("handshake message too short")
        return sym.decrypt_and_hash(bytes(view))

    @staticmethod
    def _take(view: memoryview, size: int) -> tuple[bytes, memoryview]:
        if len(view) < size:
            raise HandshakeError("handshake message too short")
        return bytes(view[:size]), view[size:]

    def _dh_token(self, token: str) -> bytes:
        """The DH of ``ee``, ``es``, ``se`` or ``ss``: first letter initiator's key, second
        responder's; each side uses its private key and the peer's public one."""
        ours_first = token[0] if self.initiator else token[1]
        theirs = token[1] if self.initiator else token[0]
        private = self._e if ours_first == "e" else self._s
        public = self.remote_ephemeral if theirs == "e" else self.remote_static
        if private is None or public is None:
            raise HandshakeError(f"token {token!r} needs a key this side does not have")
        return _dh(private, public)

    def split(self) -> tuple[CipherState, CipherState]:
        """``(initiator → responder, responder → initiator)`` cipher states."""
        if not self.finished:
            raise HandshakeError("the handshake is not finished")
        return self._symmetric.split()
