"""Fetching chunks from the connected peers: whom to ask, in what order, and what to keep.

:func:`from_peers` asks one peer at a time for what is still missing and, when a peer is slow
to answer, the next one too (a hedged request), takes the first answers that match their chunk
IDs and drops the rest; a peer whose bytes do not match is reported through a callback. The
order of the peers spreads the load and sends the silent or stalled ones to the end of the line.

Separate from :class:`commonsync.sync.folder.Folder`, which decides *which* chunks it needs and
reads what local files hold first: this module holds only the choice between peers, which is
the same whatever the chunks are for.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence

import anyio

from ..formats.chunks import chunk_id
from ..formats.records import ChunkEntry
from .exchange import PeerExchange

__all__ = ["Ask", "from_peers"]

#: Asks one peer for some chunks; its answers in the same order (None: it has not that one).
Ask = Callable[[PeerExchange, list[ChunkEntry]], Awaitable[list[bytes | None]]]


async def from_peers(
    peers: Sequence[PeerExchange],
    chunks: list[ChunkEntry],
    ask: Ask,
    start: int,
    *,
    chunk_id_key: bytes,
    received: Callable[[bytes], None],
    tampered: Callable[[PeerExchange], None],
) -> dict[bytes, bytes]:
    """``chunks`` from the connected ``peers`` (those that answer first, see
    :func:`_peers_from`), each checked against its ID under ``chunk_id_key``; ``received`` is
    called with each chunk taken, ``tampered`` with a peer that sent one that does not match.

    A peer is asked for what is still missing; when it does not have some, the next one
    is asked at once; when it is slow to answer at all (past its
    :meth:`~commonsync.sync.exchange.PeerExchange.hedge_delay`), the next one is asked too,
    and the first to answer is taken. So a peer that never answers costs a second, not a
    timeout per chunk; the requests left waiting are given up (their frames, already on
    the wire, stay whole), and the silent peer goes to the end of the line."""
    found: dict[bytes, bytes] = {}
    line = _peers_from(peers, start)
    if not line:
        return found
    size = sum(c.size for c in chunks)
    answers_in, answers = anyio.create_memory_object_stream[
        tuple[PeerExchange, list[ChunkEntry], list[bytes | None]]
    ](len(line))
    asking = 0

    async def one(peer: PeerExchange, wanted: list[ChunkEntry]) -> None:
        got = await ask(peer, wanted)
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            answers_in.send_nowait((peer, wanted, got))

    async with answers_in, answers, anyio.create_task_group() as tasks:

        def ask_next() -> float:
            """Ask the next peer in line for what is missing; when to ask another."""
            nonlocal asking
            peer = line.pop(0)
            tasks.start_soon(one, peer, [c for c in chunks if c.id not in found])
            asking += 1
            return anyio.current_time() + peer.hedge_delay(size)

        hedge_at = ask_next()
        while asking:
            answered = None
            with anyio.move_on_after(hedge_at - anyio.current_time() if line else math.inf):
                answered = await answers.receive()
            if answered is None:  # slow to answer: ask the next one too
                hedge_at = ask_next()
                continue
            asking -= 1
            peer, wanted, got = answered
            await _take_matching(peer, wanted, got, found, chunk_id_key, received, tampered)
            if len(found) == len(chunks):
                break
            if not asking and line:
                hedge_at = ask_next()
        tasks.cancel_scope.cancel()
    return found


async def _take_matching(
    peer: PeerExchange,
    wanted: list[ChunkEntry],
    answers: list[bytes | None],
    found: dict[bytes, bytes],
    chunk_id_key: bytes,
    received: Callable[[bytes], None],
    tampered: Callable[[PeerExchange], None],
) -> None:
    """Put the chunks in ``answers`` that match their IDs into ``found``."""
    got = [
        (c, d) for c, d in zip(wanted, answers, strict=True)
        if d is not None and c.id not in found
    ]  # fmt: skip
    if not got:
        return
    # In a thread: hashing a MiB takes a millisecond or two, too long for the loop.
    matching = await anyio.to_thread.run_sync(
        _matching, chunk_id_key, [c for c, _ in got], [d for _, d in got]
    )
    if len(matching) < len(got):
        tampered(peer)
    for chunk, data in got:
        if chunk.id in matching and chunk.id not in found:
            found[chunk.id] = data
            received(data)


def _peers_from(peers: Sequence[PeerExchange], start: int) -> list[PeerExchange]:
    """The connected peers to ask, in order: those that answer, beginning at a different
    one depending on ``start`` (to spread the load), then those that left requests
    unanswered, the fewest first, and last those that stalled (see
    :meth:`~commonsync.wire.session.Session.stalled_for`)."""
    answering = [p for p in peers if not p.unanswered and not p.stalled]
    first = start % len(answering) if answering else 0
    others = sorted(
        (p for p in peers if p.unanswered or p.stalled),
        key=lambda p: (p.stalled, p.unanswered),
    )
    return answering[first:] + answering[:first] + others


def _matching(key: bytes, chunks: Sequence[ChunkEntry], data: Sequence[bytes]) -> set[bytes]:
    """The IDs of the chunks whose bytes match them (in a worker thread)."""
    return {c.id for c, d in zip(chunks, data, strict=True) if chunk_id(key, d) == c.id}
