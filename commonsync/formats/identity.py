"""A device's own identity: its Ed25519 key pair, and the file that keeps it.

The key file holds the 32-byte Ed25519 seed behind a short magic, and is only ever readable by
its owner: it is created with mode 0600, written to a temporary file and renamed into place (a
crash leaves the old file or the new one, never half of one), and :meth:`DeviceIdentity.load`
refuses a file that other users can read or write.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from ..errors import IdentityError, InsecureKeyFileError, SignatureError
from .device_id import DeviceId
from .whole_files import write_whole

_MAGIC = b"commonsync-identity-v1\n"
_FILE_SIZE = len(_MAGIC) + 32


class DeviceIdentity:
    """The private identity of this device: it signs records and proves who we are."""

    def __init__(self, signing_key: SigningKey) -> None:
        self._signing_key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.device_id = DeviceId.from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> DeviceIdentity:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> DeviceIdentity:
        """Rebuild an identity from its 32-byte seed (test vectors, key files)."""
        if len(seed) != 32:
            raise IdentityError("an Ed25519 seed is 32 bytes")
        return cls(SigningKey(seed))

    @property
    def seed(self) -> bytes:
        return bytes(self._signing_key)

    def sign(self, message: bytes) -> bytes:
        """Detached Ed25519 signature (64 bytes)."""
        return bytes(self._signing_key.sign(message).signature)

    def save(self, path: Path) -> None:
        """Write the key file with owner-only permissions, atomically."""
        path = Path(path)
        try:
            write_whole(path, _MAGIC + self.seed)
        except OSError as exc:
            raise IdentityError(f"cannot create the key file {path}: {exc.strerror}") from exc

    @classmethod
    def load(cls, path: Path) -> DeviceIdentity:
        """Read a key file written by :meth:`save`, refusing one that others can access."""
        path = Path(path)
        try:
            # O_NONBLOCK: a FIFO planted at the key path must be refused, not block us forever.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise IdentityError(
                f"no device key at {path}; create one with `commonsync init`"
            ) from exc
        except OSError as exc:
            raise IdentityError(f"cannot open the key file {path}: {exc.strerror}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise IdentityError(f"the key file {path} is not a regular file")
            if info.st_mode & 0o077:
                raise InsecureKeyFileError(
                    f"the key file {path} is accessible to other users "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}); its key may have leaked. "
                    f"If you trust this machine's other users, run `chmod 600 {path}`"
                )
            data = os.read(fd, _FILE_SIZE + 1)
        except OSError as exc:
            raise IdentityError(f"cannot read the key file {path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if len(data) != _FILE_SIZE or not data.startswith(_MAGIC):
            raise IdentityError(f"the key file {path} is not a commonsync device key")
        return cls.from_seed(data[len(_MAGIC) :])

    def __repr__(self) -> str:
        return f"DeviceIdentity({self.device_id})"


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check a detached Ed25519 signature; raise :class:`SignatureError` if it is bad."""
    if len(public_key) != 32 or len(signature) != 64:
        raise SignatureError("malformed public key or signature")
    try:
        VerifyKey(public_key).verify(message, signature)
    except (CryptoError, ValueError) as exc:
        raise SignatureError("signature does not verify") from exc
