"""The membership log: entries, roles, invitations, removals, epochs and forks (issue 15's
pure core; docs/membership-design.md)."""

from __future__ import annotations

import contextlib
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commonsync import DeviceIdentity
from commonsync.errors import EntryMalformedError, EntryRefusedError, MembershipError, RollbackError
from commonsync.membership import epochs, invitations
from commonsync.membership.entries import (
    AddDevice,
    AddMember,
    Entry,
    Genesis,
    Invite,
    NewEpoch,
    RemoveDevice,
    RemoveMember,
    RevokeInvitation,
    Role,
    SetRole,
    decode_entry,
    make_entry,
)
from commonsync.membership.log import MembershipLog, decode_log
from commonsync.sync.members import LAST_SEQUENCE, newly_allowed

FOLDER = bytes(range(32))
T0 = 1_800_000_000


def device() -> DeviceIdentity:
    return DeviceIdentity.generate()


def add(
    log: MembershipLog, by: DeviceIdentity, who: DeviceIdentity, role: Role, name: str = ""
) -> bytes:
    entry = log.append(by, AddMember(name or role.name.lower(), role, (who.public_key,)), T0)
    return entry.hash


def copy(log: MembershipLog) -> MembershipLog:
    return decode_log(FOLDER, [decode_entry(e.encoded) for e in log.entries()])


@pytest.fixture
def choir() -> tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]]:
    return make_choir()


def make_choir() -> tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]]:
    """An owner, an admin, a writer and a reader."""
    people = {name: device() for name in ("owner", "admin", "writer", "reader")}
    log = MembershipLog.create(people["owner"], FOLDER, "Ada", T0)
    ids = {"owner": log.genesis}
    for name, role in (("admin", Role.ADMIN), ("writer", Role.WRITER), ("reader", Role.READER)):
        ids[name] = add(log, people["owner" if name == "admin" else "admin"], people[name], role)
    return log, people, ids


def test_an_entry_travels_byte_for_byte_and_refuses_any_change() -> None:
    me = device()
    entry = make_entry(me, FOLDER, [], T0, Genesis("Ada"))
    again = decode_entry(entry.encoded)
    assert again == entry
    assert again.hash == entry.hash
    for i in range(len(entry.encoded)):
        tampered = bytearray(entry.encoded)
        tampered[i] ^= 0x01
        with pytest.raises(EntryMalformedError):
            decode_entry(bytes(tampered))


def test_roles_hold(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    log, people, ids = choir
    state = log.state
    assert {m.name: m.role for m in state.members.values()} == {
        "Ada": Role.OWNER, "admin": Role.ADMIN, "writer": Role.WRITER, "reader": Role.READER,
    }  # fmt: skip
    assert state.may_author(people["writer"].public_key, 10**6)
    assert not state.may_author(people["reader"].public_key, 1)
    assert not state.may_author(device().public_key, 1)
    stranger = device()
    for by, action, why in [
        (people["writer"], AddMember("x", Role.READER, (stranger.public_key,)), "only admins"),
        (people["reader"], SetRole(ids["reader"], Role.WRITER), "only admins"),
        (people["admin"], RemoveMember(ids["owner"], ()), "only owners remove owners"),
        (people["admin"], AddMember("x", Role.OWNER, (stranger.public_key,)), "only owners"),
        (people["owner"], RemoveMember(ids["owner"], ()), "the last owner"),
        (stranger, AddMember("x", Role.READER, (stranger.public_key,)), "not a device of a member"),
        (
            people["admin"],
            AddDevice(ids["writer"], people["reader"].public_key),
            "already a member",
        ),
    ]:
        with pytest.raises(EntryRefusedError, match=why):
            log.append(by, action, T0)
    assert log.state == state  # nothing refused took effect


def test_a_forged_entry_is_refused_by_every_device(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    """A reader signs an entry promoting itself, as a modified client would: refused, and so is
    what descends from it."""
    log, people, ids = choir
    forged = make_entry(people["reader"], FOLDER, log.heads, T0, SetRole(ids["reader"], Role.OWNER))
    after = make_entry(people["reader"], FOLDER, [forged.hash], T0, RemoveMember(ids["owner"], ()))
    refused = copy(log).add([after, forged])
    assert {e.hash for e, _ in refused} == {forged.hash, after.hash}
    other = copy(log)
    other.add([forged, after])
    assert forged.hash not in other
    assert other.state == log.state


def test_an_invitation_admits_once_through_any_member(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    log, people, _ids = choir
    secret = invitations.new_secret()
    invite = log.append(
        people["admin"], Invite(invitations.invitation_key(secret), Role.WRITER, T0 + 3600, 1), T0
    )
    joiner = device()

    def admission(
        secret: bytes, who: DeviceIdentity, role: Role = Role.WRITER, name: str = "Bea"
    ) -> AddMember:
        proof = invitations.sign_admission(secret, FOLDER, invite.hash, name, [who.public_key])
        return AddMember(name, role, (who.public_key,), invite.hash, proof)

    with pytest.raises(EntryRefusedError, match="did not prove"):
        log.append(people["writer"], admission(invitations.new_secret(), joiner), T0)
    with pytest.raises(EntryRefusedError, match="lesser role"):
        log.append(people["writer"], admission(secret, joiner, Role.ADMIN), T0)
    late = make_entry(people["writer"], FOLDER, log.heads, T0 + 7200, admission(secret, joiner))
    assert [why for _, why in copy(log).add([late])] == ["the invitation has expired"]
    log.append(people["writer"], admission(secret, joiner), T0 + 60)  # the admin is away
    assert log.state.may_author(joiner.public_key, 1)
    with pytest.raises(EntryRefusedError, match="already used"):
        log.append(people["writer"], admission(secret, device(), name="Cy"), T0 + 61)


def test_a_revoked_invitation_admits_nobody(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    log, people, _ = choir
    secret = invitations.new_secret()
    invite = log.append(
        people["admin"], Invite(invitations.invitation_key(secret), Role.READER, T0 + 10, 5), T0
    )
    log.append(people["admin"], RevokeInvitation(invite.hash), T0)
    joiner = device()
    proof = invitations.sign_admission(secret, FOLDER, invite.hash, "Bea", [joiner.public_key])
    with pytest.raises(EntryRefusedError, match="revoked"):
        log.append(
            people["writer"],
            AddMember("Bea", Role.READER, (joiner.public_key,), invite.hash, proof),
            T0,
        )


def admit_with(
    secret: bytes, invite: bytes, who: DeviceIdentity, name: str, role: Role = Role.WRITER
) -> AddMember:
    proof = invitations.sign_admission(secret, FOLDER, invite, name, [who.public_key])
    return AddMember(name, role, (who.public_key,), invite, proof)


def test_a_removal_revokes_the_invitations_of_the_removed(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    """Removing a member revokes the invitation that admitted it (it holds the secret: a
    multi-use one would let it back in) and those it created; removing one device revokes
    the invitations that device wrote and its member's admitting one, not its member's
    others. Every device computes this alike, also from the entries alone."""
    log, people, _ids = choir
    group, own = invitations.new_secret(), invitations.new_secret()
    key = invitations.invitation_key
    group_invite = log.append(people["owner"], Invite(key(group), Role.WRITER, T0 + 3600, 30), T0)
    bea, phone = device(), device()
    bea_id = log.append(people["admin"], admit_with(group, group_invite.hash, bea, "Bea"), T0).hash
    log.append(people["owner"], SetRole(bea_id, Role.ADMIN, ()), T0)
    log.append(bea, AddDevice(bea_id, phone.public_key), T0)
    by_phone = log.append(phone, Invite(key(own), Role.READER, T0 + 3600, 5), T0)
    by_laptop = log.append(bea, Invite(key(own), Role.READER, T0 + 3600, 5), T0)
    kept = log.append(people["admin"], Invite(key(own), Role.READER, T0 + 3600, 5), T0)

    log.append(people["owner"], RemoveDevice(bea_id, phone.public_key, 0), T0)
    revoked = {i.id for i in log.state.invitations.values() if i.revoked}
    assert revoked == {group_invite.hash, by_phone.hash}  # the phone's and the admitting one
    with pytest.raises(EntryRefusedError, match="revoked"):
        log.append(people["writer"], admit_with(group, group_invite.hash, device(), "Cy"), T0)

    log.append(people["owner"], RemoveMember(bea_id, ()), T0)
    revoked = {i.id for i in log.state.invitations.values() if i.revoked}
    assert revoked == {group_invite.hash, by_phone.hash, by_laptop.hash}
    assert not log.state.invitations[kept.hash].revoked
    again = admit_with(own, by_laptop.hash, device(), "Bea again", Role.READER)
    with pytest.raises(EntryRefusedError, match="revoked"):
        log.append(people["writer"], again, T0)
    assert copy(log).state == log.state


def test_an_invitation_admits_only_while_its_maker_may_invite(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    """An admin demoted to writer keeps the secrets of the invitations it made: none of them
    admits anyone any more (else it could admit a device of its own as an admin); made an
    admin again, its invitations admit again. An owner's owner invitation admits an owner
    only while its maker is an owner."""
    log, people, ids = choir
    secret, key = invitations.new_secret(), invitations.invitation_key
    invite = log.append(people["admin"], Invite(key(secret), Role.ADMIN, T0 + 3600, 5), T0)
    log.append(people["owner"], SetRole(ids["admin"], Role.WRITER, ()), T0)
    with pytest.raises(EntryRefusedError, match="no longer an admin"):
        log.append(
            people["writer"], admit_with(secret, invite.hash, device(), "Mal", Role.ADMIN), T0
        )
    assert copy(log).state == log.state
    log.append(people["owner"], SetRole(ids["admin"], Role.ADMIN, ()), T0)
    log.append(people["writer"], admit_with(secret, invite.hash, device(), "Bea"), T0)

    second = device()
    second_id = add(log, people["owner"], second, Role.OWNER)
    owners = log.append(second, Invite(key(secret), Role.OWNER, T0 + 3600, 5), T0)
    log.append(people["owner"], SetRole(second_id, Role.ADMIN, ()), T0)
    with pytest.raises(EntryRefusedError, match="no longer an owner"):
        log.append(
            people["writer"], admit_with(secret, owners.hash, device(), "Cy", Role.OWNER), T0
        )
    log.append(people["writer"], admit_with(secret, owners.hash, device(), "Cy", Role.ADMIN), T0)


@pytest.mark.parametrize("trial", range(6))
def test_a_removal_voids_a_concurrent_admission_with_an_invitation_it_revokes(
    trial: int,
) -> None:
    """Apart from the admin who removes Bea, a member admits someone (Bea again, under a
    new device key) with the multi-use invitation that admitted her: whichever order the
    hashes give, after the merge the admission has no effect on either side."""
    log, people, _ids = make_choir()
    group = invitations.new_secret()
    invite = log.append(
        people["owner"],
        Invite(invitations.invitation_key(group), Role.WRITER, T0 + 3600, 30),
        T0 + trial,
    )
    bea = log.append(people["admin"], admit_with(group, invite.hash, device(), "Bea"), T0).hash
    left, right = copy(log), copy(log)
    left.append(people["admin"], RemoveMember(bea, ()), T0)
    back = right.append(people["writer"], admit_with(group, invite.hash, device(), "Bea"), T0)
    left.add(right.entries())
    right.add(left.entries())
    assert left.state == right.state
    assert back.hash not in left.state.members
    why = {e.hash: reason for e, reason in left.effects()}
    assert why[back.hash] == "a concurrent removal revokes the invitation it admits with"
    assert left.state.invitations[invite.hash].revoked


def test_a_removed_writer_is_credited_only_up_to_its_last_sequence(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    log, people, ids = choir
    writer = people["writer"].public_key
    log.append(people["admin"], RemoveMember(ids["writer"], ((writer, 41),)), T0)
    assert log.state.may_author(writer, 41)
    assert not log.state.may_author(writer, 42)  # a record it dates before its removal
    with pytest.raises(EntryRefusedError, match="not a device of a member"):
        log.append(people["writer"], SetRole(ids["reader"], Role.WRITER), T0)


def test_a_new_epoch_reaches_exactly_the_devices_in_force(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    log, people, ids = choir
    log.append(people["admin"], RemoveMember(ids["writer"], ()), T0)
    secret = os.urandom(32)
    in_force = [p for name, p in people.items() if name != "writer"]
    with pytest.raises(EntryRefusedError, match="exactly the devices"):
        log.append(
            people["admin"],
            NewEpoch(
                1,
                epochs.secret_hash(secret),
                tuple(
                    (p.public_key, epochs.seal_secret(secret, p.public_key))
                    for p in people.values()
                ),
            ),
            T0,
        )
    wrapped = tuple((p.public_key, epochs.seal_secret(secret, p.public_key)) for p in in_force)
    log.append(people["admin"], NewEpoch(1, epochs.secret_hash(secret), wrapped), T0)
    epoch = log.state.epoch
    assert epoch is not None
    assert epoch.number == 1
    key = epochs.open_secret(
        people["reader"], FOLDER, 1, epoch.secret_hash, epoch.wrapped[people["reader"].public_key]
    )
    assert (key.secret, key.epoch) == (secret, 1)
    assert people["writer"].public_key not in epoch.wrapped  # the removed device gets nothing
    with pytest.raises(MembershipError):
        epochs.open_secret(
            people["writer"],
            FOLDER,
            1,
            epoch.secret_hash,
            epoch.wrapped[people["reader"].public_key],
        )


@pytest.mark.parametrize("trial", range(8))  # fresh keys each: both orders of the hashes
def test_a_removal_beats_a_concurrent_role_change(trial: int) -> None:
    """Two admins apart: one removes the writer, the other makes it an admin (and the writer,
    as admin, adds someone). After they meet, both have the same head and state: the writer is
    removed and what it did meanwhile has no effect, whichever order the hashes give."""
    log, people, ids = make_choir()
    second_admin = device()
    add(log, people["owner"], second_admin, Role.ADMIN, "Dee")
    left, right = copy(log), copy(log)
    left.append(
        people["admin"], RemoveMember(ids["writer"], ((people["writer"].public_key, 7),)), T0
    )
    right.append(second_admin, SetRole(ids["writer"], Role.ADMIN), T0)
    right.append(
        people["writer"], AddMember("Eve", Role.READER, (device().public_key,)), T0
    )  # as admin
    left.add(right.entries())
    right.add(left.entries())
    assert left.state == right.state
    assert ids["writer"] not in left.state.members
    assert "Eve" not in {m.name for m in left.state.members.values()}  # what the removed did
    assert left.state.may_author(people["writer"].public_key, 7)
    assert not left.state.may_author(people["writer"].public_key, 8)
    merged = left.append(people["owner"], SetRole(ids["reader"], Role.WRITER), T0)
    assert len(merged.parents) == 2  # a merge names both heads
    right.add([merged])
    assert left.heads == right.heads == [merged.hash]


def test_an_old_log_is_a_rollback(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    log, people, ids = choir
    old = copy(log)
    log.append(people["admin"], RemoveMember(ids["reader"], ()), T0)
    with pytest.raises(RollbackError):
        old.require_contains(log.heads)
    log.require_contains(old.heads)


OPS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 5), st.integers(0, 3)),
    max_size=14,
)


@settings(max_examples=40, deadline=None)
@given(OPS, st.randoms(use_true_random=False))
def test_replicas_that_exchange_everything_agree(
    ops: list[tuple[int, int, int, int]], shuffle: random.Random
) -> None:
    """Three replicas apply random membership actions while apart (some refused), then
    exchange everything in random orders: the same log, heads and state everywhere."""
    people = [device() for _ in range(6)]
    base = MembershipLog.create(people[0], FOLDER, "p0", T0)
    for i in (1, 2):
        add(base, people[0], people[i], Role.ADMIN, f"p{i}")
    for i in (3, 4, 5):
        add(base, people[1], people[i], Role.WRITER, f"p{i}")
    replicas = [copy(base) for _ in range(3)]
    for replica, author, target, role in ops:
        log = replicas[replica]
        member = log.state.member_of(people[target].public_key)
        action: SetRole | RemoveMember | AddMember
        if member is None:
            action = AddMember(f"p{target}", Role(role), (people[target].public_key,))
        elif role == 0:
            action = RemoveMember(member.id, ((people[target].public_key, 3),))
        else:
            action = SetRole(member.id, Role(role))
        with contextlib.suppress(EntryRefusedError):  # a role may not allow it: fine
            log.append(people[author], action, T0)
    everything: list[Entry] = [e for r in replicas for e in r.entries()]
    results = []
    for replica in replicas:
        entries = list(everything)
        shuffle.shuffle(entries)
        assert replica.add(entries) == []
        results.append((replica.heads, replica.state, len(replica)))
    assert results[0] == results[1] == results[2]
    assert results[0][1].owners() >= 1


def test_a_second_genesis_is_refused_whatever_its_hash(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    """A root of its own has an empty ancestors' state, where a genesis is allowed; with a
    smaller hash it would come first in the order of effects and make its author the only
    owner (any device that knows the folder ID could take the folder over)."""
    log, _people, _ids = choir
    state, heads = log.state, log.heads
    smaller = larger = None
    while smaller is None or larger is None:
        forged = make_entry(device(), FOLDER, [], T0, Genesis("Mallory"))
        if forged.hash < log.genesis:
            smaller = forged
        else:
            larger = forged
    for forged in (smaller, larger):
        assert [(e, why) for e, why in log.add([forged])] == [(forged, "a second genesis entry")]
    assert (log.state, log.heads) == (state, heads)


def test_only_owners_add_a_device_to_an_owner(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    """Else an admin's own new device, added to an owner, would act as that owner."""
    log, people, ids = choir
    with pytest.raises(EntryRefusedError, match="only owners add an owner's device"):
        log.append(people["admin"], AddDevice(ids["owner"], device().public_key), T0)
    log.append(people["admin"], AddDevice(ids["writer"], device().public_key), T0)
    log.append(people["owner"], AddDevice(ids["owner"], device().public_key), T0)
    assert len(log.state.members[ids["owner"]].devices) == 2


def test_a_removal_voids_a_concurrent_epoch_sealed_to_the_removed_without_credits(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    """The epoch sealed its secret to the removed member's device: it is voided whether or not
    the removal credits that device any records."""
    log, people, ids = choir
    other = copy(log)
    removal = log.append(people["admin"], RemoveMember(ids["writer"], ()), T0)
    secret = os.urandom(32)
    wrapped = tuple(
        (p.public_key, epochs.seal_secret(secret, p.public_key)) for p in people.values()
    )
    epoch = other.append(people["owner"], NewEpoch(1, epochs.secret_hash(secret), wrapped), T0)
    log.add([epoch])
    other.add([removal])
    for merged in (log, other):
        assert merged.state.epoch is None
        assert dict((e.hash, why) for e, why in merged.effects())[epoch.hash] == (
            "a concurrent removal of a member it seals the secret to"
        )
    assert log.state == other.state


@pytest.mark.parametrize(("size", "usable"), [(15, False), (16, True), (64, True), (65, False)])
def test_an_invitation_secret_keys_blake2b(size: int, usable: bool) -> None:
    """16 bytes at least, and at most 64 (BLAKE2b's longest key): no invitation is made
    whose secret could not sign its admission."""
    if usable:
        assert invitations.invitation_key(bytes(size)) == (
            invitations.invitation_identity(bytes(size)).public_key
        )
    else:
        with pytest.raises(EntryMalformedError):
            invitations.invitation_key(bytes(size))


def new_epoch(people: list[DeviceIdentity], number: int) -> NewEpoch:
    secret = os.urandom(32)
    wrapped = tuple((p.public_key, epochs.seal_secret(secret, p.public_key)) for p in people)
    return NewEpoch(number, epochs.secret_hash(secret), wrapped)


def test_a_removal_without_its_epoch_calls_for_one(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    """Epoch 0's key is the one the removed writer holds: until an admin starts epoch 1, the
    log says one is missing (the remover stopped between the two entries)."""
    log, people, ids = choir
    assert not log.needs_new_epoch()
    log.append(people["admin"], RemoveMember(ids["writer"], ()), T0)
    assert log.needs_new_epoch()
    remaining = [p for name, p in people.items() if name != "writer"]
    log.append(people["owner"], new_epoch(remaining, 1), T0)
    assert not log.needs_new_epoch()
    assert list(log.epochs()) == [1]


def test_epochs_voided_by_a_merge_are_not_the_folders_and_call_for_a_new_one(
    choir: tuple[MembershipLog, dict[str, DeviceIdentity], dict[str, bytes]],
) -> None:
    """Two admins apart each remove a member and start epoch 1, sealed to the member the
    other removes: after the merge neither epoch took effect (either secret is a removed
    device's), no key of epoch 1 is the folder's, and a new epoch is called for."""
    log, people, ids = choir
    second = device()
    add(log, people["owner"], second, Role.ADMIN, "Dee")
    left, right = copy(log), copy(log)
    everyone = [*people.values(), second]
    left.append(people["admin"], RemoveMember(ids["writer"], ()), T0)
    left.append(
        people["admin"], new_epoch([p for p in everyone if p is not people["writer"]], 1), T0
    )
    right.append(second, RemoveMember(ids["reader"], ()), T0)
    right.append(second, new_epoch([p for p in everyone if p is not people["reader"]], 1), T0)
    assert list(left.epochs()) == list(right.epochs()) == [1]
    assert not left.needs_new_epoch()
    left.add(right.entries())
    right.add(left.entries())
    for merged in (left, right):
        assert merged.state.epoch is None
        assert merged.epochs() == {}
        assert merged.needs_new_epoch()
    gone = {people["writer"].public_key, people["reader"].public_key}
    remaining = [p for p in everyone if p.public_key not in gone]
    renewal = left.append(second, new_epoch(remaining, 1), T0)
    right.add([renewal])
    assert not right.needs_new_epoch()
    assert right.epochs() == {1: renewal.action.secret_hash}  # type: ignore[attr-defined]


def test_a_device_may_publish_again_what_its_log_held_back_and_now_takes() -> None:
    """:func:`newly_allowed`: the sequences of a device's records that the log refused before
    a change and takes after it (what the device publishes again, SPEC.md §15.5)."""
    log, people, ids = make_choir()
    reader, writer = people["reader"].public_key, people["writer"].public_key
    owner = people["owner"]
    before = log.state
    log.append(owner, SetRole(ids["reader"], Role.WRITER), T0)
    assert newly_allowed(before, log.state, reader) == (0, LAST_SEQUENCE)
    assert newly_allowed(before, log.state, writer) is None  # it could write: none held back
    # Made a reader again (credited with its records up to 4), then a writer once more: what
    # it made after 4 was held back; no change of the log: nothing.
    log.append(owner, SetRole(ids["reader"], Role.READER, ((reader, 4),)), T0)
    demoted = log.state
    assert newly_allowed(before, demoted, reader) == (0, 4)
    assert newly_allowed(demoted, demoted, reader) is None
    log.append(owner, SetRole(ids["reader"], Role.WRITER), T0)
    assert newly_allowed(demoted, log.state, reader) == (4, LAST_SEQUENCE)
    # Removed (as a writer, credited with 6): nothing more is taken; admitted again later as
    # a writer, what it made after 6 is.
    removed = log.state
    log.append(owner, RemoveMember(ids["reader"], ((reader, 6),)), T0)
    assert newly_allowed(removed, log.state, reader) is None
    gone = log.state
    add(log, owner, people["reader"], Role.WRITER, "reader again")
    assert newly_allowed(gone, log.state, reader) == (6, LAST_SEQUENCE)
