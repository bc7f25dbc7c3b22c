"""Progress in the engine: the rate meter, and the ``Progress`` reports two folders exchange
(SPEC.md §13) — what each learns of the other, and that a peer that does not name the
``progress`` feature is never sent one (an older device would take type 21 for a protocol
error) and is shown as unknown, never as up to date."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from commonsync import DeviceIdentity, FolderKey, Session
from commonsync.errors import MissingChunkError, UnrepresentableNameError
from commonsync.formats.messages import Hello, Message, Progress
from commonsync.formats.records import ChunkEntry
from commonsync.node.problems import folder_problems
from commonsync.node.progress import NAME_REFUSAL, name_problems, peer_status
from commonsync.sync import apply
from commonsync.sync.exchange import MEMBERSHIP_FEATURE
from commonsync.sync.folder import _permanent_reason
from commonsync.sync.progress import PeerView, RateMeter, duration, eta, transfer_words

from .test_apply import KEY, file_record
from .test_exchange import Side, connected, same, until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_of_the_last_seconds_and_nothing_moving_gives_no_estimate() -> None:
    clock = Clock()
    meter = RateMeter(window=10.0, clock=clock)
    assert meter.rate() == 0.0
    for _ in range(20):  # 1 MB every half second for 10 s: 2 MB/s
        clock.now += 0.5
        meter.add(1_000_000)
    assert meter.rate() == pytest.approx(2_000_000, rel=0.15)
    assert eta(10_000_000, meter.rate()) == pytest.approx(5.0, rel=0.15)
    clock.now += 30  # nothing for longer than the window
    assert meter.rate() == 0.0
    assert eta(10_000_000, meter.rate()) is None
    assert eta(0, 0.0) == 0.0
    assert transfer_words(5_000_000, 0.0, None) == "5.0 MB left, waiting for data"
    assert transfer_words(5_000_000, 1_000_000, 5.0) == "5.0 MB left, 1.0 MB/s, about 5 s left"
    assert [duration(s) for s in (None, 4.4, 75, 7300)] == [
        "unknown",
        "4 s",
        "1 min 15 s",
        "2 h 01 min",
    ]


def test_a_peer_view_is_up_to_date_only_once_it_took_and_wrote_everything() -> None:
    view = PeerView(seen=10, our_highest=12, untold_files=1, untold_bytes=400, total_bytes=1000)
    assert not view.caught_up
    assert view.behind_bytes == 400
    assert view.completion == pytest.approx(60.0)
    view = PeerView(seen=12, our_highest=12, need_files=1, need_bytes=0, total_bytes=1000)
    assert not view.caught_up  # told of everything, not all written yet
    assert view.completion < 100
    assert PeerView(seen=12, our_highest=12).caught_up


async def test_progress_reports_tell_each_side_how_far_the_other_is(tmp_path: Path) -> None:
    key = FolderKey.generate()
    a = Side("a", tmp_path, key, DeviceIdentity.generate())
    b = Side("b", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a").mkdir()
    for n in range(5):
        (tmp_path / "a" / f"{n}.bin").write_bytes(os.urandom(50_000))
    async with a.opened() as fa, b.opened() as fb:
        await fa.scan()
        async with connected(a, fa, b, fb):
            await until(lambda: same(a, b))
            b_id, a_id = b.identity.device_id, a.identity.device_id
            await until(lambda: b_id in fa.peer_views and fa.peer_views[b_id].caught_up)
            view = fa.peer_views[b_id]
            assert (view.behind_files, view.behind_bytes, view.total_bytes) == (0, 0, 250_000)
            (entry,) = peer_status(fa, [b_id])
            assert entry["state"] == "up to date"
            assert entry["caught_up"]
            await until(lambda: a_id in fb.peer_views and fb.peer_views[a_id].caught_up)

            # A new file on a: a sees b behind until b has written it.
            (a.root / "new.bin").write_bytes(os.urandom(70_000))
            await fa.scan()
            await until(lambda: not fa.peer_views[b_id].caught_up)
            behind = fa.peer_views[b_id]
            assert behind.behind_files == 1  # told of it, or taken and not written yet
            assert behind.behind_bytes in (70_000, 0)  # 0: written, its report on its way
            await until(lambda: fa.peer_views[b_id].caught_up)
            assert (b.root / "new.bin").exists()
        assert [m for m in a.sent if isinstance(m, Progress)]
        assert [m for m in b.sent if isinstance(m, Progress)]


async def test_a_peer_without_the_feature_gets_no_report_and_is_unknown(tmp_path: Path) -> None:
    key = FolderKey.generate()
    a = Side("a", tmp_path, key, DeviceIdentity.generate())
    b = Side("b", tmp_path, key, DeviceIdentity.generate())
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("one\n")
    b_send = Session.send

    async def as_an_older_device(self: Session, message: Message) -> None:
        # b speaks as a device that predates the feature: its Hello does not name it, and it
        # sends no reports.
        if self.channel.peer == a.identity.device_id:
            if isinstance(message, Progress):
                return
            if isinstance(message, Hello):
                message = Hello(message.version, [MEMBERSHIP_FEATURE], message.device_name,
                                message.client)  # fmt: skip
        await b_send(self, message)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Session, "send", as_an_older_device)
        async with a.opened() as fa, b.opened() as fb:
            await fa.scan()
            async with connected(a, fa, b, fb):
                await until(lambda: same(a, b))
                (a.root / "two.txt").write_text("two\n")
                await fa.scan()
                await until(lambda: same(a, b))
                b_id = b.identity.device_id
                assert b_id not in fa.peer_views
                (entry,) = peer_status(fa, [b_id])
                assert entry["connected"]
                assert not entry["caught_up"]
                assert entry["state"].startswith("unknown")
    assert not [m for m in a.sent if isinstance(m, Progress)]  # none to the older device


async def test_names_this_file_system_cannot_hold_are_a_problem_with_their_own_hint(
    tmp_path: Path,
) -> None:
    """A version whose name the file system here refuses is refused for good by the puller
    (never mangled); status tells it as one problem with what to do, not as a misbehaving
    device. (Linux file systems hold any name a record may carry, so the puller's refusal
    is made here as it makes it, with the reason it gives.)"""
    reason = _permanent_reason(UnrepresentableNameError("cannot hold it", "a:b.txt"))
    assert reason == NAME_REFUSAL
    a = Side("a", tmp_path, FolderKey.generate(), DeviceIdentity.generate())
    async with a.opened() as fa:
        fa._refused("ZS5WX2N", reason, "a:b.txt")
        fa._refused("ZS5WX2N", reason, "c?.txt")
        assert folder_problems(fa, "choir") == []
        assert name_problems(fa, "choir") == [
            {
                "problem": "2 files of choir from device ZS5WX2N cannot be written here: this "
                "file system cannot hold their names",
                "hint": "rename them on a device that holds them (for example, without "
                "characters such as : or \\ for Windows and some USB disks)",
            }
        ]


async def test_chunks_an_interrupted_attempt_wrote_count_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file resumed after an interruption: the chunks its temporary file holds are
    told to ``held`` (the bytes left then start where they were), the others are fetched;
    together, the whole file, once."""
    monkeypatch.setattr(apply, "FETCH_WINDOW", 1)  # chunks come in order: the first, then none
    data = random.Random(16).randbytes(4 * 1024 * 1024)
    rec, source = file_record("large.bin", data)
    assert len(rec.chunks) >= 3
    calls = 0

    async def fails_second(entry: ChunkEntry) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise MissingChunkError("no peer has it now")
        return await source(entry)

    with pytest.raises(MissingChunkError):
        await apply.apply_file(
            tmp_path, rec, expected=None, read_chunk=fails_second, chunk_id_key=KEY.chunk_id_key
        )
    held: list[int] = []
    fetched: list[int] = []

    async def counted(entry: ChunkEntry) -> bytes:
        data = await source(entry)
        fetched.append(len(data))
        return data

    await apply.apply_file(
        tmp_path,
        rec,
        expected=None,
        read_chunk=counted,
        chunk_id_key=KEY.chunk_id_key,
        held=held.append,
    )
    assert (tmp_path / "large.bin").read_bytes() == data
    assert held == [rec.chunks[0].size]
    assert sum(held) + sum(fetched) == len(data)
