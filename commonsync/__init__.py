"""commonsync: peer-to-peer, end-to-end encrypted file sync.

The library's building blocks, importable from here:

- :class:`DeviceIdentity` and :class:`DeviceId`: who a device is, and how people name it;
- :class:`FolderKey` and :class:`FolderKeyring`: a folder's secret per key epoch, and subkeys;
- :class:`ChunkHasher`, :func:`seal_chunk`, :func:`open_chunk`: content-defined chunks;
- :class:`Record`, :func:`seal`, :func:`open_and_verify`: signed, sealed file versions;
- :class:`VersionVector`: which version descends from which;
- :class:`IndexStore`: the SQLite index, with an async API.

Every error raised on purpose derives from :class:`CommonsyncError`.
"""

from .chunking import ChunkHasher, ChunkRef
from .chunks import chunk_id, open_chunk, seal_chunk, verify_chunk
from .device_id import DeviceId
from .errors import CommonsyncError
from .identity import DeviceIdentity
from .keys import FolderKey, FolderKeyring
from .records import ChunkEntry, Kind, Record, open_and_verify, seal
from .versionvector import Ordering, VersionVector

__version__ = "0.1.0"

__all__ = [
    "ChunkEntry",
    "ChunkHasher",
    "ChunkRef",
    "CommonsyncError",
    "DeviceId",
    "DeviceIdentity",
    "FolderKey",
    "FolderKeyring",
    "Kind",
    "Ordering",
    "Record",
    "VersionVector",
    "chunk_id",
    "open_and_verify",
    "open_chunk",
    "seal",
    "seal_chunk",
    "verify_chunk",
]
