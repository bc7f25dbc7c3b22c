"""The encrypted transport after the handshake: one libsodium secretstream per direction.

Sans-IO, in the manner of h11: :meth:`TransportCore.seal` turns a message into bytes to
write; :meth:`TransportCore.receive_data` takes bytes read from the network and
:meth:`TransportCore.next_message` hands back whole messages. Nothing here touches a socket.

Why secretstream rather than Noise transport messages: Noise caps a message at 65,535 bytes,
so a 1 MiB chunk would cost 16 AEAD calls and 16 frames; secretstream
(XChaCha20-Poly1305 with an internal counter) encrypts a whole message of up to
:data:`MAX_MESSAGE_SIZE` in one call, and it detects reordering, replay and truncation by
construction: every frame's nonce is implied by its position, and the stream must end with an
authenticated FINAL frame. Keys are the two Noise split keys (SPEC.md, "Channel").

Frame layout (each direction)::

    first: the 24-byte secretstream header
    then:  u32be(len(c)) || c      where c = secretstream_push(message), len(c) = len(m) + 17
"""

from __future__ import annotations

from nacl.bindings import (
    crypto_secretstream_xchacha20poly1305_ABYTES as _ABYTES,
)
from nacl.bindings import (
    crypto_secretstream_xchacha20poly1305_HEADERBYTES as _HEADERBYTES,
)
from nacl.bindings import (
    crypto_secretstream_xchacha20poly1305_init_pull,
    crypto_secretstream_xchacha20poly1305_init_push,
    crypto_secretstream_xchacha20poly1305_pull,
    crypto_secretstream_xchacha20poly1305_push,
    crypto_secretstream_xchacha20poly1305_state,
)
from nacl.bindings import (
    crypto_secretstream_xchacha20poly1305_TAG_FINAL as _TAG_FINAL,
)
from nacl.bindings import (
    crypto_secretstream_xchacha20poly1305_TAG_MESSAGE as _TAG_MESSAGE,
)
from nacl.exceptions import CryptoError

from ..errors import ChannelError, FrameTooLargeError, TamperedFrameError, TruncatedStreamError

#: The largest plaintext message either side may send (a 4 MiB chunk plus generous framing).
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
_LENGTH_SIZE = 4
HEADER_SIZE: int = _HEADERBYTES
OVERHEAD: int = _LENGTH_SIZE + _ABYTES


class EndOfStream:
    """Returned by :meth:`TransportCore.next_message` once the peer closed cleanly."""


END_OF_STREAM = EndOfStream()


class TransportCore:
    """Both directions of one channel's transport, as a pure state machine."""

    def __init__(
        self, send_key: bytes, receive_key: bytes, *, max_message_size: int = MAX_MESSAGE_SIZE
    ) -> None:
        if len(send_key) != 32 or len(receive_key) != 32:
            raise ChannelError("transport keys are 32 bytes")
        self._max_frame = max_message_size + _ABYTES
        self._push = crypto_secretstream_xchacha20poly1305_state()
        self._header_out: bytes | None = crypto_secretstream_xchacha20poly1305_init_push(
            self._push, send_key
        )
        self._pull = crypto_secretstream_xchacha20poly1305_state()
        self._receive_key: bytes | None = receive_key
        self._buffer = bytearray()
        self._sent_final = False
        self._received_final = False
        self._peer_eof = False

    # -- sending ----------------------------------------------------------------------------

    def seal(self, message: bytes, *, final: bool = False) -> bytes:
        """The bytes that carry ``message``; ``final`` ends this direction of the stream."""
        head, sealed = self.seal_parts(message, final=final)
        return head + sealed

    def seal_parts(self, message: bytes, *, final: bool = False) -> tuple[bytes, bytes]:
        """:meth:`seal` in two pieces to write one after the other (stream header and frame
        length, then the ciphertext): for a large message this spares a copy of it."""
        if self._sent_final:
            raise ChannelError("cannot send after the end of the stream")
        if len(message) > self._max_frame - _ABYTES:
            raise FrameTooLargeError(
                f"message of {len(message)} bytes is over the {self._max_frame - _ABYTES} limit"
            )
        tag = _TAG_FINAL if final else _TAG_MESSAGE
        sealed = crypto_secretstream_xchacha20poly1305_push(self._push, message, None, tag)
        self._sent_final = final
        prefix = b""
        if self._header_out is not None:
            prefix, self._header_out = self._header_out, None
        return prefix + len(sealed).to_bytes(_LENGTH_SIZE, "big"), sealed

    def close(self) -> bytes:
        """The authenticated end-of-stream frame."""
        return self.seal(b"", final=True)

    # -- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the network; ``b""`` means the peer closed the connection."""
        if not data:
            self._peer_eof = True
            return
        self._buffer += data

    @property
    def bytes_wanted(self) -> int:
        """How many more bytes complete the next frame (a hint for the reader's buffer)."""
        need = HEADER_SIZE if self._receive_key is not None else 0
        if len(self._buffer) < need + _LENGTH_SIZE:
            return need + _LENGTH_SIZE - len(self._buffer)
        length = int.from_bytes(self._buffer[need : need + _LENGTH_SIZE], "big")
        return max(0, need + _LENGTH_SIZE + length - len(self._buffer))

    def next_message(self) -> bytes | EndOfStream | None:
        """The next whole message, END_OF_STREAM after the peer's final frame, or None when
        more data is needed. Raises a ChannelError subclass on anything malformed."""
        if self._received_final:
            return END_OF_STREAM
        if self._receive_key is not None:
            if len(self._buffer) < HEADER_SIZE:
                self._check_not_truncated()
                return None
            header = bytes(self._buffer[:HEADER_SIZE])
            del self._buffer[:HEADER_SIZE]
            try:
                crypto_secretstream_xchacha20poly1305_init_pull(
                    self._pull, header, self._receive_key
                )
            except CryptoError as exc:
                raise TamperedFrameError("invalid stream header") from exc
            self._receive_key = None
        if len(self._buffer) < _LENGTH_SIZE:
            self._check_not_truncated()
            return None
        length = int.from_bytes(self._buffer[:_LENGTH_SIZE], "big")
        if length > self._max_frame or length < _ABYTES:
            raise FrameTooLargeError(
                f"peer announced a frame of {length} bytes; the limit is {self._max_frame}"
            )
        if len(self._buffer) < _LENGTH_SIZE + length:
            self._check_not_truncated()
            return None
        with memoryview(self._buffer) as view:  # one copy of the frame, not two
            sealed = bytes(view[_LENGTH_SIZE : _LENGTH_SIZE + length])
        del self._buffer[: _LENGTH_SIZE + length]
        try:
            message, tag = crypto_secretstream_xchacha20poly1305_pull(self._pull, sealed)
        except CryptoError as exc:
            raise TamperedFrameError(
                "a frame failed authentication (modified, reordered, replayed or foreign)"
            ) from exc
        if tag == _TAG_FINAL:
            self._received_final = True
            if message or self._buffer:
                raise ChannelError("data after the end of the stream")
            return END_OF_STREAM
        if tag != _TAG_MESSAGE:
            raise TamperedFrameError(f"unexpected frame tag {tag}")
        return message

    def _check_not_truncated(self) -> None:
        if self._peer_eof:
            raise TruncatedStreamError(
                "the connection ended in the middle of the stream (no end-of-stream frame)"
            )
