"""The channel handshake: Noise XX plus device-identity proofs, as a sans-IO state machine.

In the manner of h11: feed bytes read from the network to :meth:`ChannelHandshake.receive_data`,
write out what :meth:`ChannelHandshake.data_to_send` returns, and look at
:attr:`ChannelHandshake.state`. Nothing here touches a socket or a clock; the anyio wrapper in
:mod:`commonsync.wire.channel` adds both.

The exchange (SPEC.md, "Channel handshake")::

    -> e                        hello: magic, protocol versions, features      (clear)
    <- e, ee, s, es             version, features, Ed25519 key, signature      (encrypted)
    -> s, se                    verdict, Ed25519 key, signature                (encrypted)
    <- first transport message: verdict

Each signature covers the handshake hash just before it, with the signer's role, so a proof
cannot be replayed on another channel or reflected; the device ID a peer claims is thus the one
whose key it holds. Each side then asks its ``accept`` callback; a refusal is sent as a verdict,
so both sides end with a clear error (:class:`PeerRefusedError` on the refusing side,
:class:`RefusedByPeerError` on the other) and nothing else is exchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import (
    ChannelError,
    EncodingError,
    HandshakeError,
    RefusedByPeerError,
    SignatureError,
    UnsupportedVersionError,
)
from ..formats import encoding
from ..formats.device_id import DeviceId
from ..formats.hashing import derive_key
from ..formats.identity import DeviceIdentity, verify_signature
from .noise import HandshakeState, generate_keypair
from .transport import END_OF_STREAM, MAX_MESSAGE_SIZE, TransportCore

NOISE_PROTOCOL = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
MAGIC = "commonsync"
#: The channel protocol versions this implementation speaks, in order of preference.
VERSIONS: tuple[int, ...] = (1,)
MAX_FEATURES = 32
MAX_FEATURE_LEN = 64
#: The Noise prologue: every handshake of this protocol, whatever its version, mixes it in.
PROLOGUE = b"commonsync channel"
SIGNATURE_CONTEXT = b"commonsync/v1 channel-identity\x00"
NOISE_STATIC_CONTEXT = b"commonsync/v1 noise-static"
_LENGTH_SIZE = 2
_MAX_PAYLOAD = 2048

#: A peer's device ID → whether we accept a channel with it.
AcceptPolicy = Callable[[DeviceId], bool]
#: The feature an initiator names when it comes to join a folder with an invitation (SPEC.md
#: §15.9): a responder that takes joiners accepts it whatever its device ID.
JOIN_FEATURE = "join"


class PeerRefusedError(HandshakeError):
    """We refused the peer: its device ID is not one we accept."""

    def __init__(self, message: str, device_id: DeviceId) -> None:
        super().__init__(message)
        self.device_id = device_id


class Verdict(enum.IntEnum):
    ACCEPTED = 0
    #: The same code as the wire protocol's CloseReason.UNKNOWN_DEVICE.
    UNKNOWN_DEVICE = 2


class State(enum.Enum):
    IN_PROGRESS = "in progress"
    ESTABLISHED = "established"
    FAILED = "failed"


@dataclass(frozen=True)
class Established:
    """What a finished handshake gives: who the peer is, and the transport to talk to it."""

    peer: DeviceId
    peer_public_key: bytes
    handshake_hash: bytes
    version: int
    features: frozenset[str]
    initiator: bool
    transport: TransportCore


def noise_static_key(identity: DeviceIdentity) -> bytes:
    """The device's X25519 static key: a subkey of its Ed25519 seed, so it is stable per
    device without a second key file, and independent of the signing key."""
    return derive_key(identity.seed, NOISE_STATIC_CONTEXT)


def signed_transcript(role: bytes, handshake_hash: bytes) -> bytes:
    return SIGNATURE_CONTEXT + role + handshake_hash


class ChannelHandshake:
    """One side of a channel handshake."""

    def __init__(
        self,
        identity: DeviceIdentity,
        *,
        initiator: bool,
        accept: AcceptPolicy,
        features: Sequence[str] = (),
        versions: Sequence[int] = VERSIONS,
        ephemeral: bytes | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
        accept_joiners: bool = False,
    ) -> None:
        """``ephemeral`` fixes the Noise ephemeral key: for test vectors only.
        ``accept_joiners`` (a responder's option) also accepts an initiator that ``accept``
        refuses when it names :data:`JOIN_FEATURE`: the caller then gives it nothing but the
        join conversation.
        ``max_message_size`` bounds the transport messages the peer may send afterwards (a
        relay's control channel carries only small messages, so it accepts only small
        frames and never buffers a large one)."""
        _check_features(list(features), HandshakeError)
        self.identity = identity
        self.initiator = initiator
        self._accept = accept
        self._accept_joiners = accept_joiners
        self._features = list(features)
        self._versions = list(versions)
        self._max_message_size = max_message_size
        self._noise = HandshakeState(
            NOISE_PROTOCOL, initiator=initiator, prologue=PROLOGUE, ephemeral=ephemeral
        )
        if not initiator:
            self._noise.set_static(noise_static_key(identity))
        self._inbox = bytearray()
        self._outbox = bytearray()
        self.state = State.IN_PROGRESS
        self.error: HandshakeError | None = None
        self._result: Established | None = None
        #: Set once the Noise messages are done; the initiator still awaits the verdict.
        self._transport: TransportCore | None = None
        self._pending: tuple[DeviceId, bytes, int, frozenset[str]] | None = None
        if initiator:
            hello = encoding.pack([MAGIC, self._versions, self._features])
            self._send_noise(self._noise.write_message(hello))

    # -- the h11-style surface ---------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    @property
    def bytes_wanted(self) -> int:
        """How many more bytes the next step needs, at least (a hint for the reader)."""
        if self._transport is not None:
            return max(1, self._transport.bytes_wanted)
        if len(self._inbox) < _LENGTH_SIZE:
            return _LENGTH_SIZE - len(self._inbox)
        length = int.from_bytes(self._inbox[:_LENGTH_SIZE], "big")
        return max(1, _LENGTH_SIZE + length - len(self._inbox))

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer (``b""``: it closed the connection), then check
        :attr:`state`. Errors also land in :attr:`error` and make the state FAILED."""
        if self.state is not State.IN_PROGRESS:
            raise HandshakeError(f"the handshake is {self.state.value}")
        try:
            self._receive(data)
        except HandshakeError as exc:
            self.state, self.error = State.FAILED, exc
            raise

    def result(self) -> Established:
        if self._result is None:
            raise HandshakeError(f"the handshake is {self.state.value}, not established")
        return self._result

    # -- internals ---------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.receive_data(data)
            self._read_verdict()
            return
        if not data:
            raise HandshakeError("the peer closed the connection during the handshake")
        self._inbox += data
        while self.state is State.IN_PROGRESS and self._transport is None:
            if len(self._inbox) < _LENGTH_SIZE:
                return
            length = int.from_bytes(self._inbox[:_LENGTH_SIZE], "big")
            if len(self._inbox) < _LENGTH_SIZE + length:
                return
            message = bytes(self._inbox[_LENGTH_SIZE : _LENGTH_SIZE + length])
            del self._inbox[: _LENGTH_SIZE + length]
            self._on_noise_message(message)
        if self._transport is not None and self._inbox:
            # Transport bytes that came in the same read as the last handshake message.
            leftover = bytes(self._inbox)
            self._inbox.clear()
            self._transport.receive_data(leftover)
            if self.state is State.IN_PROGRESS:
                self._read_verdict()

    def _on_noise_message(self, message: bytes) -> None:
        payload = self._noise.read_message(message)
        hash_before = self._noise.hash_before_payload
        if not self.initiator and self._noise.remote_static is None:
            self._on_hello(payload)
        elif self.initiator:
            self._on_responder_identity(payload, hash_before)
        else:
            self._on_initiator_identity(payload, hash_before)

    def _on_hello(self, payload: bytes) -> None:
        """Responder, message 1: pick a version, answer with our identity."""
        hello = _unpack(payload, 3, "hello")
        magic, versions, features = hello
        if magic != MAGIC:
            raise HandshakeError("the peer does not speak the commonsync protocol")
        if not isinstance(versions, list) or not 0 < len(versions) <= 16:
            raise HandshakeError("the peer's hello has no valid version list")
        if not all(type(v) is int and 0 < v < 2**32 for v in versions):
            raise HandshakeError("the peer's hello has no valid version list")
        _check_features(features, HandshakeError)
        common = [v for v in self._versions if v in versions]
        if not common:
            self._send_noise(self._noise.write_message(encoding.pack([0, [], b"", b""])))
            raise UnsupportedVersionError(
                f"the peer speaks channel versions {versions}, this device {self._versions}"
            )
        self._version = common[0]
        self._peer_features = frozenset(features)

        def identity_payload(handshake_hash: bytes) -> bytes:
            signature = self.identity.sign(signed_transcript(b"R", handshake_hash))
            return encoding.pack(
                [self._version, self._features, self.identity.public_key, signature]
            )

        self._send_noise(self._noise.write_message(identity_payload))

    def _on_responder_identity(self, payload: bytes, hash_before: bytes) -> None:
        """Initiator, message 2: check the responder's proof, decide, answer."""
        version, features, public_key, signature = _unpack(payload, 4, "responder identity")
        if version == 0:
            raise UnsupportedVersionError(
                f"the peer speaks none of this device's channel versions {self._versions}"
            )
        if version not in self._versions:
            raise HandshakeError(f"the peer chose channel version {version}, never offered")
        _check_features(features, HandshakeError)
        peer = _verify_identity(public_key, signature, b"R", hash_before)
        if not self._accept(peer):
            # Refuse under a throwaway static key: a refused peer learns nothing about us.
            self._noise.set_static(generate_keypair()[0])
            self._send_noise(
                self._noise.write_message(encoding.pack([Verdict.UNKNOWN_DEVICE, b"", b""]))
            )
            raise PeerRefusedError(f"refused the channel: device {peer} is not accepted", peer)
        self._noise.set_static(noise_static_key(self.identity))

        def identity_payload(handshake_hash: bytes) -> bytes:
            signature = self.identity.sign(signed_transcript(b"I", handshake_hash))
            return encoding.pack([Verdict.ACCEPTED, self.identity.public_key, signature])

        self._send_noise(self._noise.write_message(identity_payload))
        self._pending = (peer, public_key, version, frozenset(features))
        self._transport = self._make_transport()

    def _on_initiator_identity(self, payload: bytes, hash_before: bytes) -> None:
        """Responder, message 3: the initiator's verdict on us, then its proof; our verdict."""
        verdict, public_key, signature = _unpack(payload, 3, "initiator identity")
        if verdict != Verdict.ACCEPTED:
            raise RefusedByPeerError(
                "the peer refused the channel: it does not accept this device "
                f"({self.identity.device_id})"
            )
        peer = _verify_identity(public_key, signature, b"I", hash_before)
        transport = self._transport = self._make_transport()
        joiner = self._accept_joiners and JOIN_FEATURE in self._peer_features
        if not self._accept(peer) and not joiner:
            self._outbox += transport.seal(encoding.pack([Verdict.UNKNOWN_DEVICE]))
            self._outbox += transport.close()
            raise PeerRefusedError(f"refused the channel: device {peer} is not accepted", peer)
        self._outbox += transport.seal(encoding.pack([Verdict.ACCEPTED]))
        self._establish(peer, public_key, self._version, self._peer_features, transport)

    def _read_verdict(self) -> None:
        """Initiator, after message 3: the responder's verdict, its first transport message."""
        assert self._transport is not None
        assert self._pending is not None
        try:
            message = self._transport.next_message()
        except ChannelError as exc:
            raise HandshakeError(f"the peer's verdict is unreadable: {exc}") from exc
        if message is None:
            return
        if message is END_OF_STREAM:
            raise RefusedByPeerError("the peer closed the channel without a verdict")
        assert isinstance(message, bytes)
        (verdict,) = _unpack(message, 1, "verdict")
        if verdict != Verdict.ACCEPTED:
            raise RefusedByPeerError(
                f"device {self._pending[0]} refused the channel: it does not accept this "
                f"device ({self.identity.device_id}); add it there first"
            )
        self._establish(*self._pending, self._transport)

    def _make_transport(self) -> TransportCore:
        initiator_to_responder, responder_to_initiator = self._noise.split()
        assert initiator_to_responder.key is not None
        assert responder_to_initiator.key is not None
        limit = self._max_message_size
        if self.initiator:
            return TransportCore(
                initiator_to_responder.key, responder_to_initiator.key, max_message_size=limit
            )
        return TransportCore(
            responder_to_initiator.key, initiator_to_responder.key, max_message_size=limit
        )

    def _establish(
        self,
        peer: DeviceId,
        public_key: bytes,
        version: int,
        features: frozenset[str],
        transport: TransportCore,
    ) -> None:
        self._result = Established(
            peer=peer,
            peer_public_key=public_key,
            handshake_hash=self._noise.handshake_hash,
            version=version,
            features=features,
            initiator=self.initiator,
            transport=transport,
        )
        self.state = State.ESTABLISHED

    def _send_noise(self, message: bytes) -> None:
        self._outbox += len(message).to_bytes(_LENGTH_SIZE, "big") + message


def _unpack(payload: bytes, fields: int, what: str) -> list[Any]:
    try:
        value = encoding.unpack(payload, max_size=_MAX_PAYLOAD, what=what)
    except EncodingError as exc:
        raise HandshakeError(f"the peer's {what} is malformed: {exc}") from exc
    if not isinstance(value, list) or len(value) != fields:
        raise HandshakeError(f"the peer's {what} does not have {fields} fields")
    return value


def _check_features(features: object, error: type[HandshakeError]) -> None:
    if (
        not isinstance(features, list)
        or len(features) > MAX_FEATURES
        or not all(isinstance(f, str) and 0 < len(f.encode()) <= MAX_FEATURE_LEN for f in features)
    ):
        raise error(f"features must be at most {MAX_FEATURES} names of 1-{MAX_FEATURE_LEN} bytes")


def _verify_identity(public_key: object, signature: object, role: bytes, hash_: bytes) -> DeviceId:
    if not isinstance(public_key, bytes) or not isinstance(signature, bytes):
        raise HandshakeError("the peer's identity proof is malformed")
    try:
        verify_signature(public_key, signed_transcript(role, hash_), signature)
    except SignatureError as exc:
        raise HandshakeError(
            "the peer's identity proof does not verify: it does not hold the key it claims"
        ) from exc
    return DeviceId.from_public_key(public_key)
