"""A peer that breaks the sync protocol is told so: the session ends with ``Close(1, reason)``
before the end of stream (SPEC.md §12, "Closing"), not with the end of stream alone.

One real folder (its own SQLite store and directory) serves a real channel on loopback; the
other side is a bare :class:`Session` that sends the offending message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
import pytest

from commonsync import DeviceIdentity, FolderKey, Session, open_folder
from commonsync.formats.messages import (
    ChunkRequest,
    CloseReason,
    Folders,
    Hello,
    IndexRequest,
    Message,
)
from commonsync.sync.store import open_store
from commonsync.wire.channel import accept_channel, connect_channel
from commonsync.wire.session import SessionClosedError, folder_proof

pytestmark = pytest.mark.anyio
TIMEOUT = 20


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def _index_request(key: FolderKey) -> Message:
    return IndexRequest(key.folder_id, bytes(16), 0)


#: After a valid Hello and Folders (proving the folder): what breaks the protocol, and the
#: words the Close must carry.
VIOLATIONS: dict[str, tuple[Callable[[FolderKey, Message], list[Message]], str]] = {
    "a second Hello": (lambda key, folders: [Hello(1, [], "again", "test")], "second Hello"),
    "a second Folders": (lambda key, folders: [folders], "second Folders"),
    "a second IndexRequest": (
        lambda key, folders: [_index_request(key), _index_request(key)],
        "second IndexRequest",
    ),
    "a request for an unshared folder": (
        lambda key, folders: [ChunkRequest(1, os.urandom(32), os.urandom(32), 10)],
        "did not prove",
    ),
}


@pytest.mark.parametrize("violation", list(VIOLATIONS))
async def test_a_protocol_error_ends_the_session_with_close_1(
    tmp_path: Path, violation: str
) -> None:
    key = FolderKey.generate()
    root = tmp_path / "victim"
    root.mkdir()
    make, words = VIOLATIONS[violation]
    async with (
        open_store(tmp_path / "victim.db") as store,
        open_folder(root, key, DeviceIdentity.generate(), store, device_name="victim") as folder,
        anyio.create_task_group() as tasks,
    ):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        served = anyio.Event()

        async def serve(stream: anyio.abc.ByteStream) -> None:
            channel = await accept_channel(stream, DeviceIdentity.generate(), accept=lambda d: True)
            try:
                await folder.sync(Session(channel))
            except Exception:  # the victim's side ends with its ProtocolError
                pass
            finally:
                served.set()

        # Not the folder's identity: the listener only needs a device to speak for it.
        tasks.start_soon(listener.serve, serve)
        with anyio.fail_after(TIMEOUT):
            channel = await connect_channel(
                "127.0.0.1", port, DeviceIdentity.generate(), accept=lambda d: True
            )
            session = Session(channel)
            await session.send(Hello(1, [], "mallory", "test"))
            proof = folder_proof(key, channel.handshake_hash, sender_is_initiator=True)
            folders = Folders([[proof, bytes(16), 0]])
            await session.send(folders)
            for message in make(key, folders):
                await session.send(message)
            with pytest.raises(SessionClosedError) as closed:
                async for _message in session:
                    pass  # the victim's Hello, Folders, IndexRequest, Index
            await served.wait()
        assert closed.value.reason == CloseReason.PROTOCOL_ERROR
        assert words in closed.value.detail
        tasks.cancel_scope.cancel()
