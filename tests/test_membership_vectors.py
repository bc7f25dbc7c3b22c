"""The library reproduces protocol/vectors/membership.json (SPEC.md §15): entries byte for
byte, the encodings every implementation refuses, the forked log's order, heads and state
whatever order its entries arrive in, an invitation's key and admission, an epoch's secret.

Everything is recomputed from the inputs in the file; nothing here writes it
(protocol/generate_vectors.py does).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from nacl.bindings import (
    crypto_box,
    crypto_scalarmult_base,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
    crypto_sign_seed_keypair,
)

from commonsync.errors import EntryMalformedError, MembershipError
from commonsync.formats import encoding
from commonsync.formats.device_id import DeviceId
from commonsync.formats.hashing import blake2b, derive_key
from commonsync.formats.identity import DeviceIdentity, verify_signature
from commonsync.formats.keys import FolderKey
from commonsync.membership import epochs, invitations
from commonsync.membership.entries import (
    HASH_CONTEXT,
    MAX_DEVICES,
    MAX_ENTRY_BYTES,
    MAX_NAME_BYTES,
    MAX_PARENTS,
    SEALED_SECRET_BYTES,
    SIGNATURE_CONTEXT,
    Action,
    AddDevice,
    AddMember,
    Entry,
    Genesis,
    Invite,
    NewEpoch,
    Op,
    RemoveDevice,
    RemoveMember,
    RevokeInvitation,
    Role,
    SetRole,
    decode_entry,
    make_entry,
)
from commonsync.membership.links import JoinLink
from commonsync.membership.log import MAX_ENTRIES, MembershipLog

from .vectors import load

VECTORS = load("membership.json")
LOG = VECTORS["log"]


def unjson(value: Any) -> Any:
    """The vectors' JSON form back to msgpack values: ``{"hex": ...}`` is bytes."""
    if isinstance(value, dict):
        return bytes.fromhex(value["hex"])
    if isinstance(value, list):
        return [unjson(v) for v in value]
    return value


def action_of(op: int, args: list[Any]) -> Action:
    """The action the table of SPEC.md §15.2 reads from ``op`` and ``args``."""
    a = unjson(args)
    match Op(op):
        case Op.GENESIS:
            return Genesis(a[0])
        case Op.ADD_MEMBER:
            return AddMember(a[0], Role(a[1]), tuple(a[2]), a[3], a[4])
        case Op.SET_ROLE:
            return SetRole(a[0], Role(a[1]), tuple((d, n) for d, n in a[2]))
        case Op.ADD_DEVICE:
            return AddDevice(a[0], a[1])
        case Op.REMOVE_DEVICE:
            return RemoveDevice(a[0], a[1], a[2])
        case Op.REMOVE_MEMBER:
            return RemoveMember(a[0], tuple((d, n) for d, n in a[1]))
        case Op.NEW_EPOCH:
            return NewEpoch(a[0], a[1], tuple((d, w) for d, w in a[2]))
        case Op.INVITE:
            return Invite(a[0], Role(a[1]), a[2], a[3])
        case Op.REVOKE_INVITATION:
            return RevokeInvitation(a[0])
    raise AssertionError(op)


def case(label: str) -> dict[str, Any]:
    return next(c for c in VECTORS["entries"] if c["label"] == label)


def test_the_constants_are_the_spec_s() -> None:
    assert VECTORS["contexts"] == {
        "signature": SIGNATURE_CONTEXT.decode(),
        "hash": HASH_CONTEXT.decode(),
        "invitation_key": invitations.KEY_CONTEXT.decode(),
        "admission": invitations.ADMISSION_CONTEXT.decode(),
        "epoch_secret": epochs.SECRET_HASH_CONTEXT.decode(),
    }
    assert VECTORS["limits"] == {
        "max_entry_bytes": MAX_ENTRY_BYTES,
        "max_parents": MAX_PARENTS,
        "max_devices": MAX_DEVICES,
        "max_name_bytes": MAX_NAME_BYTES,
        "sealed_secret_bytes": SEALED_SECRET_BYTES,
        "max_entries": MAX_ENTRIES,
    }


@pytest.mark.parametrize("vector", VECTORS["entries"], ids=lambda c: c["label"])
def test_an_entry_is_made_and_read_byte_for_byte(vector: dict[str, Any]) -> None:
    author = DeviceIdentity.from_seed(bytes.fromhex(vector["author_seed"]))
    assert author.public_key.hex() == vector["author"]
    action = action_of(vector["op"], vector["args"])
    parents = [bytes.fromhex(p) for p in vector["parents"]]
    folder_id = bytes.fromhex(vector["folder_id"])
    entry = make_entry(author, folder_id, parents, vector["time"], action)
    assert entry.signed_bytes().hex() == vector["signed"]
    assert entry.signature.hex() == vector["signature"]
    assert entry.encoded.hex() == vector["encoded"]
    assert entry.hash.hex() == vector["hash"]
    # The same, spelled out as SPEC.md §15.1 says it.
    fields = [1, folder_id, parents, author.public_key, vector["time"], vector["op"]]
    fields.append(unjson(vector["args"]))
    signed = bytes.fromhex(vector["signed"])
    assert signed == b"commonsync/v1 membership-entry\x00" + encoding.pack(fields)
    verify_signature(author.public_key, signed, entry.signature)
    assert entry.encoded == encoding.pack([*fields, entry.signature])
    assert entry.hash == blake2b(b"commonsync/v1 membership-hash\x00" + entry.encoded)
    decoded = decode_entry(bytes.fromhex(vector["encoded"]))
    assert decoded == entry
    assert decoded.hash == entry.hash


@pytest.mark.parametrize("vector", VECTORS["invalid_entries"], ids=lambda c: c["reason"])
def test_an_invalid_entry_is_refused(vector: dict[str, str]) -> None:
    with pytest.raises(EntryMalformedError):
        decode_entry(bytes.fromhex(vector["encoded"]))


# -- the forked log ------------------------------------------------------------------------------


def log_entries() -> list[Entry]:
    entries = [decode_entry(bytes.fromhex(e["encoded"])) for e in LOG["entries"]]
    assert [e.hash.hex() for e in entries] == [e["hash"] for e in LOG["entries"]]
    return entries


def refused_entries() -> list[Entry]:
    return [decode_entry(bytes.fromhex(r["encoded"])) for r in LOG["refused"]]


def assert_final(log: MembershipLog) -> None:
    assert [e.hash.hex() for e, _ in log.effects()] == LOG["effect_order"]
    no_effect = [
        {"hash": e.hash.hex(), "reason": why} for e, why in log.effects() if why is not None
    ]
    assert no_effect == [{"hash": n["hash"], "reason": n["reason"]} for n in LOG["no_effect"]]
    assert [h.hex() for h in log.heads] == LOG["heads_after_merge"] == [LOG["merge"]]
    assert log.state.as_json() == LOG["state"]


def topological_shuffle(entries: list[Entry], genesis: Entry, rng: random.Random) -> list[Entry]:
    """The entries in a random order in which parents come first."""
    placed = {genesis.hash}
    waiting = list(entries)
    out: list[Entry] = []
    while waiting:
        ready = [e for e in waiting if all(p in placed for p in e.parents)]
        pick = rng.choice(ready)
        waiting.remove(pick)
        placed.add(pick.hash)
        out.append(pick)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_forked_log_gives_one_order_and_state_in_any_arrival_order(seed: int) -> None:
    entries = log_entries()
    genesis, rest = entries[0], entries[1:]
    rng = random.Random(seed)
    batch = {0: rest, 1: rest[::-1]}.get(seed) or rng.sample(rest, len(rest))
    at_once = MembershipLog(genesis.folder_id, genesis)
    assert at_once.add(batch) == []
    assert_final(at_once)
    one_by_one = MembershipLog(genesis.folder_id, genesis)
    for entry in topological_shuffle(rest, genesis, rng):
        assert one_by_one.add([entry]) == []
    assert_final(one_by_one)
    assert one_by_one.state == at_once.state


def test_the_heads_and_state_before_the_merge() -> None:
    entries = log_entries()
    merge = entries[-1]
    assert merge.hash.hex() == LOG["merge"]
    assert sorted(p.hex() for p in merge.parents) == LOG["heads_before_merge"]
    log = MembershipLog(entries[0].folder_id, entries[0])
    assert log.add(entries[1:-1]) == []
    assert [h.hex() for h in log.heads] == LOG["heads_before_merge"]
    assert len(LOG["heads_before_merge"]) == 2
    assert log.state.as_json() == LOG["state_before_merge"]
    assert log.add([merge]) == []
    assert_final(log)


@pytest.mark.parametrize("seed", range(4))
def test_every_device_refuses_the_same_entries(seed: int) -> None:
    entries = log_entries()
    refused = refused_entries()
    log = MembershipLog(entries[0].folder_id, entries[0])
    batch = entries[1:] + refused
    random.Random(seed).shuffle(batch)
    got = log.add(batch)
    assert sorted((e.hash.hex(), why) for e, why in got) == sorted(
        (r["hash"], r["reason"]) for r in LOG["refused"]
    )
    assert_final(log)
    for entry in refused:  # and again, one by one, to the whole log
        assert entry.hash not in log
        assert [e.hash for e, _ in log.add([entry])] == [entry.hash]
    assert_final(log)


def test_the_state_decides_which_records_are_taken() -> None:
    """SPEC.md §15.5: a writer's (or more) device, any sequence; any other device, up to the
    sequence credited to it."""
    entries = log_entries()
    log = MembershipLog(entries[0].folder_id, entries[0])
    log.add(entries[1:])
    state = log.state
    credited = {bytes.fromhex(d): n for d, n in LOG["state"]["credited"]}
    assert credited
    for device, last in credited.items():
        assert state.member_of(device) is None
        assert state.may_author(device, last)
        assert not state.may_author(device, last + 1)
    for member in LOG["state"]["members"]:
        for device in map(bytes.fromhex, member["devices"]):
            writes = member["role"] >= Role.WRITER
            assert state.may_author(device, 2**63 - 1) is writes
            assert state.may_author(device, 1) is (writes or credited.get(device, 0) >= 1)


def test_the_merge_epoch_opens_on_every_device_in_force() -> None:
    entries = log_entries()
    merge = entries[-1]
    assert isinstance(merge.action, NewEpoch)
    secret = bytes.fromhex(LOG["epoch_secret"])
    seeds = {bytes.fromhex(s) for s in LOG["device_seeds"].values()}
    identities = {DeviceIdentity.from_seed(s) for s in seeds}
    by_key = {i.public_key: i for i in identities}
    assert {d.hex() for d, _ in merge.action.wrapped} == set(LOG["state"]["epoch"]["devices"])
    for device, sealed in merge.action.wrapped:
        key = epochs.open_secret(
            by_key[device], merge.folder_id, 1, merge.action.secret_hash, sealed
        )
        assert key.secret == secret


# -- invitation and epoch ------------------------------------------------------------------------


REVOCATION = VECTORS["revocation"]


@pytest.mark.parametrize("seed", range(4))
def test_removals_revoke_the_invitations_of_the_removed(seed: int) -> None:
    """SPEC.md §15.6: a removal revokes the invitation that admitted the member (or the
    device's member) and those the removed created; an admission with one concurrent with
    the removal takes no effect, one after it is refused; in any arrival order."""
    entries = [decode_entry(bytes.fromhex(e["encoded"])) for e in REVOCATION["entries"]]
    assert [e.hash.hex() for e in entries] == [e["hash"] for e in REVOCATION["entries"]]
    genesis, rest = entries[0], entries[1:]
    log = MembershipLog(genesis.folder_id, genesis)
    for entry in topological_shuffle(rest, genesis, random.Random(seed)):
        assert log.add([entry]) == []
    assert [e.hash.hex() for e, _ in log.effects()] == REVOCATION["effect_order"]
    no_effect = [{"hash": e.hash.hex(), "reason": r} for e, r in log.effects() if r is not None]
    assert no_effect == [
        {"hash": n["hash"], "reason": n["reason"]} for n in REVOCATION["no_effect"]
    ]
    assert log.state.as_json() == REVOCATION["state"]
    assert all(i["revoked"] for i in REVOCATION["state"]["invitations"])
    refused = [decode_entry(bytes.fromhex(r["encoded"])) for r in REVOCATION["refused"]]
    assert [(e.hash.hex(), why) for e, why in log.add(refused)] == [
        (r["hash"], r["reason"]) for r in REVOCATION["refused"]
    ]


DEMOTION = REVOCATION["demotion"]


@pytest.mark.parametrize("seed", range(4))
def test_an_invitation_admits_only_while_its_maker_is_an_admin(seed: int) -> None:
    """SPEC.md §15.3 (add member), §15.6: Bea's invitation admits Dee while she is an admin;
    demoted to writer, she keeps its secret, and her admission of a device of her own as an
    admin with it is refused. Nothing was revoked: made an admin again, her invitation admits
    Eve, while her admission stays refused (a log takes an entry by its ancestors' state)."""
    entries = [decode_entry(bytes.fromhex(e["encoded"])) for e in DEMOTION["entries"]]
    assert [e.hash.hex() for e in entries] == [e["hash"] for e in DEMOTION["entries"]]
    genesis, rest = entries[0], entries[1:]
    log = MembershipLog(genesis.folder_id, genesis)
    for entry in topological_shuffle(rest, genesis, random.Random(seed)):
        assert log.add([entry]) == []
    assert [e.hash.hex() for e, _ in log.effects()] == DEMOTION["effect_order"]
    assert [why for _, why in log.effects() if why is not None] == DEMOTION["no_effect"] == []
    assert log.state.as_json() == DEMOTION["state"]
    names = {m.name: m for m in log.state.members.values()}
    assert set(names) == {"Ada", "Bea", "Cy", "Dee", "Eve"}
    [invitation] = log.state.invitations.values()
    assert (invitation.by, invitation.used, invitation.revoked) == (names["Bea"].id, 2, False)

    # Bea's admission: by her device, with her invitation's secret, within its role and time.
    [vector] = DEMOTION["refused"]
    refused = decode_entry(bytes.fromhex(vector["encoded"]))
    assert refused.hash.hex() == vector["hash"]
    seeds = {
        n: DeviceIdentity.from_seed(bytes.fromhex(s)) for n, s in DEMOTION["device_seeds"].items()
    }
    assert refused.author == seeds["bea"].public_key
    action = refused.action
    assert isinstance(action, AddMember)
    assert action.devices == (seeds["bea spare"].public_key,)
    assert (action.invitation, action.role) == (invitation.id, Role.ADMIN)
    secret = bytes.fromhex(DEMOTION["invitation_secret"])
    assert invitations.invitation_key(secret) == invitation.key
    assert action.invitation_signature == invitations.sign_admission(
        secret, refused.folder_id, invitation.id, action.name, list(action.devices)
    )
    assert refused.time <= invitation.expires
    assert log.add([refused]) == [(refused, vector["reason"])]
    assert log.state.member_of(seeds["bea spare"].public_key) is None
    assert log.state.admits_with(invitation, refused.time)  # Bea is an admin again

    # The log of its ancestors only, where Bea is a writer, refuses it too.
    ancestry = set(refused.parents)  # the entries are listed parents first
    for entry in reversed(entries):
        if entry.hash in ancestry:
            ancestry.update(entry.parents)
    then = MembershipLog(genesis.folder_id, genesis)
    assert then.add([e for e in rest if e.hash in ancestry]) == []
    assert then.state.members[names["Bea"].id].role is Role.WRITER
    assert not then.state.invitations[invitation.id].revoked
    assert not then.state.admits_with(then.state.invitations[invitation.id], refused.time)
    assert then.add([refused]) == [(refused, vector["reason"])]


def test_the_invitation_key_and_admission() -> None:
    v = VECTORS["invitation"]
    secret = bytes.fromhex(v["secret"])
    assert derive_key(secret, b"commonsync/v1 invitation-key").hex() == v["key_seed"]
    assert invitations.invitation_key(secret).hex() == v["key"]
    public, _ = crypto_sign_seed_keypair(bytes.fromhex(v["key_seed"]))
    assert public.hex() == v["key"]
    folder_id, invitation = bytes.fromhex(v["folder_id"]), bytes.fromhex(v["invitation"])
    devices = [bytes.fromhex(d) for d in v["devices"]]
    message = invitations.admission_message(folder_id, invitation, v["name"], devices)
    assert message.hex() == v["admission_message"]
    spelled_out = b"commonsync/v1 invitation\x00" + folder_id + invitation
    assert message == spelled_out + encoding.pack([v["name"], devices])
    signature = invitations.sign_admission(secret, folder_id, invitation, v["name"], devices)
    assert signature.hex() == v["signature"]
    key = bytes.fromhex(v["key"])
    assert invitations.admission_verifies(key, signature, folder_id, invitation, v["name"], devices)
    assert not invitations.admission_verifies(
        key, signature, folder_id, invitation, v["name"], devices[:1]
    )
    for size in v["refused_secret_sizes"]:
        with pytest.raises(EntryMalformedError):
            invitations.invitation_key(bytes(size))
    # The entries of §15.2 that use it.
    invite = decode_entry(bytes.fromhex(case("invite")["encoded"]))
    assert invite.hash == invitation
    assert isinstance(invite.action, Invite)
    assert invite.action.key == key
    admission = decode_entry(bytes.fromhex(case("add member by invitation")["encoded"]))
    assert admission.action == AddMember(
        v["name"], Role.WRITER, tuple(devices), invitation, signature
    )


def test_the_sealed_epoch_secret_opens_to_the_folder_key() -> None:
    v = VECTORS["epoch"]
    device = DeviceIdentity.from_seed(bytes.fromhex(v["device_seed"]))
    assert device.public_key.hex() == v["device_public_key"]
    x_public = crypto_sign_ed25519_pk_to_curve25519(device.public_key)
    _, ed_secret = crypto_sign_seed_keypair(device.seed)
    assert x_public.hex() == v["device_x25519_public_key"]
    assert crypto_sign_ed25519_sk_to_curve25519(ed_secret).hex() == v["device_x25519_secret_key"]
    folder_id, sealed = bytes.fromhex(v["folder_id"]), bytes.fromhex(v["sealed"])
    key = epochs.open_secret(device, folder_id, v["epoch"], bytes.fromhex(v["secret_hash"]), sealed)
    assert key.secret.hex() == v["secret"]
    assert epochs.secret_hash(key.secret).hex() == v["secret_hash"]
    assert blake2b(b"commonsync/v1 epoch-secret\x00" + key.secret).hex() == v["secret_hash"]
    assert key == FolderKey(folder_id, v["epoch"], key.secret)
    assert key.to_bytes().hex() == v["folder_key"]
    assert key.record_seal_key.hex() == v["record_seal_key"]
    # crypto_box_seal as SPEC.md §15.7 spells it, with the ephemeral key the vector used.
    ephemeral = bytes.fromhex(v["ephemeral_secret_key"])
    ephemeral_public = crypto_scalarmult_base(ephemeral)
    assert ephemeral_public.hex() == v["ephemeral_public_key"]
    nonce = blake2b(ephemeral_public + x_public, size=24)
    assert nonce.hex() == v["nonce"]
    assert ephemeral_public + crypto_box(key.secret, nonce, x_public, ephemeral) == sealed
    assert len(sealed) == SEALED_SECRET_BYTES
    # The new epoch entry that carries it, and a device it was not sealed to.
    entry = decode_entry(bytes.fromhex(case("new epoch")["encoded"]))
    assert entry.hash.hex() == v["entry"]
    assert isinstance(entry.action, NewEpoch)
    assert dict(entry.action.wrapped)[device.public_key] == sealed
    assert entry.action.secret_hash.hex() == v["secret_hash"]
    stranger = DeviceIdentity.from_seed(bytes(32))
    with pytest.raises(MembershipError):
        epochs.open_secret(stranger, folder_id, v["epoch"], entry.action.secret_hash, sealed)


def test_join_link_vectors() -> None:
    for case in load("join-links.json")["cases"]:
        link = JoinLink(
            bytes.fromhex(case["folder_id"]),
            bytes.fromhex(case["invitation"]),
            case["label"],
            bytes.fromhex(case["secret"]),
            case["name"],
            tuple((DeviceId(bytes.fromhex(d)), tuple(a)) for d, a in case["devices"]),
            tuple(case["relays"]),
        )
        assert str(link) == case["link"]
        assert JoinLink.parse(case["link"]) == link
        # What a mail program does to a long line, and shouting, change nothing.
        assert JoinLink.parse(" " + case["link"][:40] + "\n  " + case["link"][40:].upper()) == link
