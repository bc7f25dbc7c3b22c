"""commonsync: peer-to-peer, end-to-end encrypted file sync.

A whole device, for a tool that wants sync in a few lines:

- :class:`Node` and :class:`NodeConfig`: one device at run time (its folders, the devices it
  knows and how to reach them, offers, events), configured with plain data; under trio or
  asyncio (:mod:`commonsync.node`).

The building blocks beneath it, floor by floor (each subpackage imports only from those
below: :mod:`commonsync.formats`, :mod:`commonsync.wire`, :mod:`commonsync.relay` and
:mod:`commonsync.sync`), importable from here too:

- :class:`DeviceIdentity` and :class:`DeviceId`: who a device is, and how people name it;
- :class:`FolderKey` and :class:`FolderKeyring`: a folder's secret per key epoch, and subkeys;
- :class:`ChunkHasher`, :func:`seal_chunk`, :func:`open_chunk`: content-defined chunks;
- :class:`Record`, :func:`seal`, :func:`open_and_verify`: signed, sealed file versions;
- :class:`VersionVector`: which version descends from which;
- :class:`IndexStore`: the SQLite index, with an async API;
- :func:`connect_channel`, :func:`accept_channel`, :func:`open_channel` and :class:`Channel`:
  the authenticated, encrypted channel between two devices, over any anyio byte stream;
- :class:`Session`: the wire protocol's messages over a channel, with flow control;
- :func:`connect_relay`, :func:`open_relayed_channel`, :func:`accept_relayed_channel`: a
  community relay's client, for channels between devices that cannot reach each other;
- :class:`Folder` and :func:`open_folder`: a synced folder (scan, sync with peers, events).

Every error raised on purpose derives from :class:`CommonsyncError`; a request a Node cannot
do raises a :class:`RequestError`.
"""

from .errors import CommonsyncError, RequestError
from .formats.chunking import ChunkHasher, ChunkRef
from .formats.chunks import chunk_id, open_chunk, seal_chunk, verify_chunk
from .formats.device_id import DeviceId
from .formats.identity import DeviceIdentity
from .formats.keys import FolderKey, FolderKeyring
from .formats.records import ChunkEntry, Kind, Record, open_and_verify, seal
from .formats.versionvector import Ordering, VersionVector
from .node.config import DeviceConfig, FolderConfig, NodeConfig, RelayConfig
from .node.home import NodeHome
from .node.node import Node
from .relay.client import RelayControl, accept_relayed_channel, connect_relay, open_relayed_channel
from .sync.folder import Event, EventKind, Folder, Progress, open_folder
from .sync.store import IndexStore, open_store
from .wire.channel import Channel, accept_channel, connect_channel, open_channel
from .wire.session import Session, folder_proof

__version__ = "0.1.0"

__all__ = [
    "Channel",
    "ChunkEntry",
    "ChunkHasher",
    "ChunkRef",
    "CommonsyncError",
    "DeviceConfig",
    "DeviceId",
    "DeviceIdentity",
    "Event",
    "EventKind",
    "Folder",
    "FolderConfig",
    "FolderKey",
    "FolderKeyring",
    "IndexStore",
    "Kind",
    "Node",
    "NodeConfig",
    "NodeHome",
    "Ordering",
    "Progress",
    "Record",
    "RelayConfig",
    "RelayControl",
    "RequestError",
    "Session",
    "VersionVector",
    "accept_channel",
    "accept_relayed_channel",
    "chunk_id",
    "connect_channel",
    "connect_relay",
    "folder_proof",
    "open_and_verify",
    "open_channel",
    "open_chunk",
    "open_folder",
    "open_relayed_channel",
    "open_store",
    "seal",
    "seal_chunk",
    "verify_chunk",
]
