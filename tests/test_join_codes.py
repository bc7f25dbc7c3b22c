"""Joining with a short code (SPEC.md §15.10): library Nodes on loopback, found on the LAN
(zeroconf pinned to 127.0.0.1), the PAKE run over the real channel."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from commonsync import NodeConfig
from commonsync.errors import InvalidRequestError, RequestConflictError, UnavailableError
from commonsync.membership.codes import MAX_FAILURES, WORDS, JoinCode
from commonsync.membership.entries import Role

from .relays import RelayProcess
from .test_members_sync import nodes
from .test_node import until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def lan() -> NodeConfig:
    return NodeConfig(listen="127.0.0.1:0", discovery_interfaces=["127.0.0.1"])


def wrong(code: str) -> str:
    """The same nameplate, another second word."""
    parsed = JoinCode.parse(code)
    other = next(w for w in WORDS if w != parsed.words[1])
    return str(JoinCode(parsed.nameplate, (parsed.words[0], other)))


async def test_a_code_read_over_the_phone_joins_on_the_lan(tmp_path: Path) -> None:
    (tmp_path / "anna").mkdir()
    (tmp_path / "anna" / "agenda.txt").write_text("rehearsal on Tuesday")
    async with nodes(tmp_path, "anna", "ben", config=lan) as (anna, ben):
        await anna.add_folder(tmp_path / "anna", "choir")
        invited = await anna.invite("choir", role=Role.WRITER, name="Ben")
        code = invited["code"]
        assert invited["code_relay"] is None  # no relay: the LAN only
        await until(lambda: bool(ben.peers.discovered_addresses(anna.device_id)), "anna seen")

        # A typo in a word is caught before any network, and spends nothing.
        typo = code.replace("-", "-x", 1)
        with pytest.raises(InvalidRequestError, match="not a code word"):
            await ben.join(typo, parent=tmp_path)
        # A code nobody holds here.
        other_plate = str(JoinCode(JoinCode.parse(code).nameplate + 1, ("guitar", "orbit")))
        with pytest.raises(UnavailableError, match="no code"):
            await ben.join(other_plate, parent=tmp_path)
        # A wrong guess costs one of the attempts, and says so.
        with pytest.raises(RequestConflictError, match=f"{MAX_FAILURES - 1} attempts left"):
            await ben.join(wrong(code), parent=tmp_path)
        assert anna.codes.listing()[0]["attempts_left"] == MAX_FAILURES - 1

        runner = await ben.join(code, parent=tmp_path)
        assert runner.config.path == tmp_path / "choir"
        await until(lambda: (tmp_path / "choir" / "agenda.txt").exists(), "ben syncs")
        names = {m["name"]: m["role"] for m in anna.members("choir")["members"]}
        assert names.get("Ben") == "writer"
        assert anna.codes.listing() == []  # redeemed: a code is good once
        # The link itself still works for what the invitation allows (here: nobody more).
        assert anna.members("choir")["invitations"] == []


async def test_wrong_guesses_void_a_code_and_a_new_one_works(tmp_path: Path) -> None:
    (tmp_path / "anna").mkdir()
    async with nodes(tmp_path, "anna", "eve", "ben", config=lan) as (anna, eve, ben):
        await anna.add_folder(tmp_path / "anna", "choir")
        code = (await anna.invite("choir"))["code"]
        await until(lambda: bool(eve.peers.discovered_addresses(anna.device_id)), "anna seen")
        guesses = [wrong(code)] * MAX_FAILURES
        for i, guess in enumerate(guesses):
            with pytest.raises(RequestConflictError, match="wrong code"):
                await eve.join(guess, parent=tmp_path / "eve")
            assert len(anna.codes.listing()) == (0 if i == MAX_FAILURES - 1 else 1)
        # Void now, even for the right code; nothing was admitted.
        with pytest.raises(UnavailableError):
            await ben.join(code, parent=tmp_path / "ben")
        assert len(anna.members("choir")["members"]) == 1
        fresh = (await anna.invite("choir"))["code"]
        await until(lambda: bool(ben.peers.discovered_addresses(anna.device_id)), "anna seen")
        await ben.join(fresh, parent=tmp_path / "ben")
        assert len(anna.members("choir")["members"]) == 2


async def test_a_code_through_a_relay_the_joiner_is_not_a_member_of(tmp_path: Path) -> None:
    """No LAN: Anna's nameplate is held by her relay; Ben, a stranger to the relay, reaches
    her there for the code's conversation only, then syncs at the address the link names."""
    (tmp_path / "anna").mkdir()
    (tmp_path / "anna" / "agenda.txt").write_text("rehearsal on Tuesday")
    relay = RelayProcess(tmp_path)
    try:
        async with nodes(tmp_path, "anna", "ben") as (anna, ben):
            await anyio.to_thread.run_sync(relay.init, str(anna.device_id))
            await anyio.to_thread.run_sync(relay.start)
            await anna.add_relay(relay.address)
            await until(lambda: bool(anna.peers.relays.connected()), "anna reaches her relay")
            await anna.add_folder(tmp_path / "anna", "choir")
            invited = await anna.invite("choir", name="Ben")
            assert invited["code_relay"]
            await ben.add_relay(relay.address)
            with pytest.raises(RequestConflictError, match="wrong code"):
                await ben.join(wrong(invited["code"]), parent=tmp_path)
            await ben.join(invited["code"], parent=tmp_path)
            await until(lambda: (tmp_path / "choir" / "agenda.txt").exists(), "ben syncs")
            assert "Ben" in {m["name"] for m in anna.members("choir")["members"]}
            # The relay's log never names the code's words.
            assert invited["code"].split("-", 1)[1] not in relay.log.read_text()
    finally:
        relay.kill()


async def test_a_code_closes_when_its_invitation_is_used_by_the_link(tmp_path: Path) -> None:
    """The code and the link are two forms of one invitation: once the link admits someone
    (one use), the code is listed open no more and holds no nameplate."""
    (tmp_path / "anna").mkdir()
    async with nodes(tmp_path, "anna", "ben") as (anna, ben):
        await anna.add_folder(tmp_path / "anna", "choir")
        invited = await anna.invite("choir")
        assert [c["nameplate"] for c in anna.members("choir")["codes"]] == [
            JoinCode.parse(invited["code"]).nameplate
        ]
        await ben.join(invited["link"], tmp_path / "ben")
        await until(lambda: not anna.members("choir")["codes"], "the code closes")
        assert anna.codes.listing() == []
