"""A folder's membership log: who may write which entry, how forks merge, and the state.

The rules are SPEC.md's (§15.3 who may write what, §15.4 the order of effects and forks); in
short:

- An entry is *refused* (it and everything descending from it stay out of the log) when it is
  not allowed in the state of its own ancestors: its author was not a device of a member, or
  the member's role does not allow it.
- The state is the effect of the log's entries in one order every device computes alike (a
  topological order, smallest hash first among those ready). An entry in the log still takes
  no effect when a removal of its author's member, or of the member it acts on, is concurrent
  with it (a removal beats what the removed did or had done for them meanwhile), or when an
  entry before it in that order took its place (a device added to two members, an
  invitation's last use, an epoch's number).

Logs are small (an association's members and their changes): the state is recomputed whole
when entries are added, at most :data:`MAX_ENTRIES` of them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import EntryMalformedError, EntryRefusedError, RollbackError
from ..formats.identity import DeviceIdentity
from . import invitations
from .entries import (
    Action,
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
    make_entry,
)

MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Member:
    """A member in force: named by the hash of the entry that added it."""

    id: bytes
    name: str
    role: Role
    devices: frozenset[bytes]
    #: The invitation that admitted it (b"": none); its removal revokes that invitation.
    invitation: bytes = b""


@dataclass(frozen=True)
class Invitation:
    id: bytes
    key: bytes
    role: Role
    expires: int
    uses: int
    used: int = 0
    revoked: bool = False
    by: bytes = b""  # the member that created it
    device: bytes = b""  # the device that wrote the invite entry (where its secret was made)

    def usable(self, time: int) -> bool:
        return not self.revoked and self.used < self.uses and time <= self.expires


@dataclass(frozen=True)
class Epoch:
    number: int
    secret_hash: bytes
    #: The secret sealed to each device that was in force when the epoch began.
    wrapped: dict[bytes, bytes]


@dataclass(frozen=True)
class State:
    """What a log says at one point: members, their devices, invitations, the key epoch, and
    the record sequence numbers still credited to devices that may write no more."""

    members: dict[bytes, Member] = field(default_factory=dict)
    invitations: dict[bytes, Invitation] = field(default_factory=dict)
    epoch: Epoch | None = None
    #: Per device removed (or whose member became a reader): its last credited sequence.
    credited: dict[bytes, int] = field(default_factory=dict)

    def member_of(self, device: bytes) -> Member | None:
        return next((m for m in self.members.values() if device in m.devices), None)

    def owners(self) -> int:
        return sum(1 for m in self.members.values() if m.role is Role.OWNER)

    def as_json(self) -> dict[str, Any]:
        """The state as data (bytes in hex, every list sorted bytewise by its first item):
        the form of the vectors' states (protocol/vectors/membership.json)."""
        epoch = self.epoch
        return {
            "members": [
                {
                    "id": m.id.hex(),
                    "name": m.name,
                    "role": int(m.role),
                    "devices": sorted(d.hex() for d in m.devices),
                }
                for m in sorted(self.members.values(), key=lambda m: m.id)
            ],
            "credited": [[d.hex(), n] for d, n in sorted(self.credited.items())],
            "invitations": [
                {
                    "id": i.id.hex(),
                    "key": i.key.hex(),
                    "role": int(i.role),
                    "expires": i.expires,
                    "uses": i.uses,
                    "used": i.used,
                    "revoked": i.revoked,
                    "by": i.by.hex(),
                }
                for i in sorted(self.invitations.values(), key=lambda i: i.id)
            ],
            "epoch": None
            if epoch is None
            else {
                "number": epoch.number,
                "secret_hash": epoch.secret_hash.hex(),
                "devices": sorted(d.hex() for d in epoch.wrapped),
            },
        }

    def admits_with(self, invitation: Invitation, time: int) -> bool:
        """Whether ``invitation`` may still admit someone at ``time``: usable, and made by a
        member who is still an admin or owner (SPEC.md §15.4, add member)."""
        maker = self.members.get(invitation.by)
        return invitation.usable(time) and maker is not None and maker.role >= Role.ADMIN

    def may_author(self, device: bytes, sequence: int) -> bool:
        """Whether a record by ``device`` with ``sequence`` is to be accepted: the device's
        member writes, or the record is one of those credited to it before it stopped."""
        member = self.member_of(device)
        if member is not None and member.role >= Role.WRITER:
            return True
        return sequence <= self.credited.get(device, 0)


def check(state: State, entry: Entry) -> str | None:
    """Why ``entry`` is not allowed in ``state``, or None if it is (the rules of
    SPEC.md §15.3)."""
    action = entry.action
    if isinstance(action, Genesis):
        return None if not state.members else "a second genesis entry"
    author = state.member_of(entry.author)
    if author is None:
        return "its author is not a device of a member"
    admin = author.role >= Role.ADMIN
    owner = author.role is Role.OWNER
    match action:
        case AddMember():
            if any(state.member_of(d) is not None for d in action.devices):
                return "a device it adds is already a member's"
            if action.invitation:
                return _admission(state, entry, action)
            if not admin:
                return "only admins and owners add members"
            if action.role is Role.OWNER and not owner:
                return "only owners make owners"
        case SetRole():
            target = state.members.get(action.member)
            if target is None:
                return "the member is not in the folder"
            if not admin:
                return "only admins and owners change roles"
            if Role.OWNER in (target.role, action.role) and not owner:
                return "only owners make or demote owners"
            if target.role is Role.OWNER and action.role is not Role.OWNER and state.owners() < 2:
                return "the last owner cannot be demoted"
            if _credits(action.last_sequences) - set(target.devices):
                return "it credits devices that are not the member's"
        case AddDevice():
            target = state.members.get(action.member)
            if target is None:
                return "the member is not in the folder"
            if target is not author and not admin:
                return "only the member itself, admins and owners add its devices"
            if target.role is Role.OWNER and target is not author and not owner:
                # Else an admin's own device added to an owner would act as that owner.
                return "only owners add an owner's device"
            if state.member_of(action.device) is not None:
                return "the device is already a member's"
        case RemoveDevice():
            target = state.members.get(action.member)
            if target is None or action.device not in target.devices:
                return "the device is not the member's"
            if target is not author and not admin:
                return "only the member itself, admins and owners remove its devices"
            if target.role is Role.OWNER and target is not author and not owner:
                return "only owners remove an owner's device"
        case RemoveMember():
            target = state.members.get(action.member)
            if target is None:
                return "the member is not in the folder"
            if target is not author and not admin:
                return "only admins and owners remove members (others may leave)"
            if target.role is Role.OWNER and target is not author and not owner:
                return "only owners remove owners"
            if target.role is Role.OWNER and state.owners() < 2:
                return "the last owner cannot be removed"
            if _credits(action.last_sequences) - set(target.devices):
                return "it credits devices that are not the member's"
        case NewEpoch():
            if not admin:
                return "only admins and owners start a key epoch"
            current = state.epoch.number if state.epoch is not None else 0
            if action.epoch != current + 1:
                return f"epoch {action.epoch} does not follow epoch {current}"
            devices = {d for m in state.members.values() for d in m.devices}
            if {d for d, _ in action.wrapped} != devices:
                return "the secret is not sealed to exactly the devices in force"
        case Invite():
            if not admin:
                return "only admins and owners invite"
            if action.role is Role.OWNER and not owner:
                return "only owners invite owners"
        case RevokeInvitation():
            invitation = state.invitations.get(action.invitation)
            if invitation is None:
                return "no such invitation"
            if not admin and invitation.by != author.id:
                return "only admins, owners and its creator revoke an invitation"
    return None


def _admission(state: State, entry: Entry, action: AddMember) -> str | None:
    invitation = state.invitations.get(action.invitation)
    if invitation is None:
        return "no such invitation"
    if invitation.revoked:
        return "the invitation was revoked"
    creator = state.members.get(invitation.by)
    if creator is None or creator.role < Role.ADMIN:
        # Demoted since: else a demoted admin who kept an admin invitation's secret could
        # admit a device of its own as an admin again.
        return "the member who made the invitation is no longer an admin"
    if action.role is Role.OWNER and creator.role is not Role.OWNER:
        return "the member who made the invitation is no longer an owner"
    if entry.time > invitation.expires:
        return "the invitation has expired"
    if invitation.used >= invitation.uses:
        return "the invitation was already used"
    if action.role > invitation.role:
        return "the invitation is for a lesser role"
    if not invitations.admission_verifies(
        invitation.key,
        action.invitation_signature,
        entry.folder_id,
        action.invitation,
        action.name,
        list(action.devices),
    ):
        return "the joiner did not prove the invitation's secret"
    return None


def apply(state: State, entry: Entry) -> State:
    """The state after ``entry`` (which :func:`check` allowed)."""
    members = dict(state.members)
    credited = dict(state.credited)
    author = state.member_of(entry.author)
    action = entry.action
    match action:
        case Genesis(name):
            members[entry.hash] = Member(entry.hash, name, Role.OWNER, frozenset([entry.author]))
        case AddMember():
            members[entry.hash] = Member(
                entry.hash, action.name, action.role, frozenset(action.devices), action.invitation
            )
            if action.invitation:
                used = state.invitations[action.invitation]
                invitations_ = dict(state.invitations)
                invitations_[used.id] = replace(used, used=used.used + 1)
                return replace(state, members=members, invitations=invitations_)
        case SetRole():
            target = members[action.member]
            members[action.member] = replace(target, role=action.role)
            credited.update(_credits_taken(target, action.last_sequences))
        case AddDevice():
            target = members[action.member]
            members[target.id] = replace(target, devices=target.devices | {action.device})
        case RemoveDevice():
            target = members[action.member]
            members[target.id] = replace(target, devices=target.devices - {action.device})
            credited.update(_credits_taken(target, ((action.device, action.last_sequence),)))
            return replace(
                state, members=members, credited=credited, invitations=_revoke(state, action)
            )
        case RemoveMember():
            credited.update(_credits_taken(members.pop(action.member), action.last_sequences))
            return replace(
                state, members=members, credited=credited, invitations=_revoke(state, action)
            )
        case NewEpoch():
            epoch = Epoch(action.epoch, action.secret_hash, dict(action.wrapped))
            return replace(state, epoch=epoch)
        case Invite():
            invitation = Invitation(
                entry.hash,
                action.key,
                action.role,
                action.expires,
                action.uses,
                by=author.id if author is not None else b"",
                device=entry.author,
            )
            return replace(state, invitations={**state.invitations, entry.hash: invitation})
        case RevokeInvitation():
            revoked = replace(state.invitations[action.invitation], revoked=True)
            return replace(state, invitations={**state.invitations, revoked.id: revoked})
    return replace(state, members=members, credited=credited)


def revoked_by(state: State, removal: RemoveMember | RemoveDevice) -> set[bytes]:
    """The invitations of ``state`` in force that ``removal`` revokes (SPEC.md §15.6): the one
    that admitted the member it removes or whose device it removes (the removed holds its
    secret, and a multi-use one would admit them again), and those the removed created (a
    member's, or the invite entries the removed device wrote: it made their secrets)."""
    target = state.members.get(removal.member)
    admitted = target.invitation if target is not None else b""

    def made(invitation: Invitation) -> bool:
        if isinstance(removal, RemoveMember):
            return invitation.by == removal.member
        return invitation.device == removal.device

    invitations_ = state.invitations.values()
    return {i.id for i in invitations_ if not i.revoked and (i.id == admitted or made(i))}


def _revoke(state: State, removal: RemoveMember | RemoveDevice) -> dict[bytes, Invitation]:
    invitations_ = dict(state.invitations)
    for invitation in revoked_by(state, removal):
        invitations_[invitation] = replace(invitations_[invitation], revoked=True)
    return invitations_


class MembershipLog:
    """The entries of one folder's log that this device holds, checked, and their state."""

    def __init__(self, folder_id: bytes, genesis: Entry) -> None:
        if not isinstance(genesis.action, Genesis) or genesis.folder_id != folder_id:
            raise EntryRefusedError("a log starts with its folder's genesis entry")
        self.folder_id = folder_id
        self.genesis = genesis.hash
        self._entries: dict[bytes, Entry] = {genesis.hash: genesis}
        self._order: list[bytes] = [genesis.hash]
        self._ancestors: dict[bytes, int] = {genesis.hash: 0}  # bit i: self._order[i]
        #: Each entry's ancestors' state, and that state after the entry.
        self._before: dict[bytes, State] = {genesis.hash: State()}
        self._after: dict[bytes, State] = {genesis.hash: apply(State(), genesis)}
        self._state = self._after[genesis.hash]

    @classmethod
    def create(
        cls, identity: DeviceIdentity, folder_id: bytes, name: str, time: int
    ) -> MembershipLog:
        """A new folder's log, its creator the first owner."""
        return cls(folder_id, make_entry(identity, folder_id, [], time, Genesis(name)))

    # -- what it holds -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def heads(self) -> list[bytes]:
        """The entries no other entry names as a parent: what a new entry names."""
        named = {p for e in self._entries.values() for p in e.parents}
        return sorted(h for h in self._entries if h not in named)

    def __contains__(self, entry_hash: bytes) -> bool:
        return entry_hash in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry]:
        """Every entry, parents before children (the order in which to send them)."""
        return [self._entries[h] for h in self._order]

    def entries_beyond(self, heads: Iterable[bytes]) -> list[Entry]:
        """The entries that are neither one of ``heads`` nor their ancestor, parents first:
        what a device whose log has those heads lacks (heads this log does not hold are
        skipped; their holder sends them)."""
        known = 0
        for head in heads:
            if head in self._entries:
                known |= self._ancestors[head] | (1 << self._order.index(head))
        return [self._entries[h] for i, h in enumerate(self._order) if not known >> i & 1]

    def require_contains(self, heads: Iterable[bytes]) -> None:
        """:class:`RollbackError` unless every one of ``heads`` (what this device saw
        before) is in the log: a log without them is an old or another log."""
        missing = [h for h in heads if h not in self._entries]
        if missing:
            raise RollbackError(
                f"the membership log lacks {len(missing)} entries this device has seen: it is "
                "an older log, or not this folder's"
            )

    # -- adding --------------------------------------------------------------------------------

    def append(self, identity: DeviceIdentity, action: Action, time: int) -> Entry:
        """Write an entry of ``action`` by this device after every head; refused (and not
        added) if this log would refuse it, or it would take no effect."""
        entry = make_entry(identity, self.folder_id, self.heads, time, action)
        reason = check(self._state, entry)
        if reason is not None:
            raise EntryRefusedError(f"refused: {reason}")
        self.add([entry])
        return entry

    def add(self, entries: Iterable[Entry]) -> list[tuple[Entry, str]]:
        """Take the entries (in any order) that extend the log; returns those refused, with
        why. An entry whose parents are missing, here and among ``entries``, is refused too
        (it may be sent again with them)."""
        waiting = {e.hash: e for e in entries if e.hash not in self._entries}
        refused: list[tuple[Entry, str]] = []
        progress = True
        while waiting and progress:
            progress = False
            for entry_hash, entry in sorted(waiting.items()):
                if not all(p in self._entries for p in entry.parents):
                    continue
                del waiting[entry_hash]
                progress = True
                reason = self._admit(entry)
                if reason is not None:
                    refused.append((entry, reason))
        refused.extend((e, "its parents are not in the log") for e in waiting.values())
        self._recompute()
        return refused

    def _admit(self, entry: Entry) -> str | None:
        if entry.folder_id != self.folder_id:
            return "it is another folder's"
        if isinstance(entry.action, Genesis):
            # Its ancestors' state is empty, so check() would allow it; in the order of
            # effects a smaller hash would then make its author the folder's only owner.
            return "a second genesis entry"
        if len(self._entries) >= MAX_ENTRIES:
            return f"the log holds {MAX_ENTRIES} entries already"
        ancestors = 0
        for parent in entry.parents:
            ancestors |= self._ancestors[parent] | (1 << self._order.index(parent))
        before = self._state_of(ancestors, entry.parents)
        reason = check(before, entry)
        if reason is not None:
            return reason
        self._entries[entry.hash] = entry
        self._ancestors[entry.hash] = ancestors
        self._order.append(entry.hash)  # a parents-first order; the effect order is computed
        self._before[entry.hash] = before
        self._after[entry.hash] = apply(before, entry)
        return None

    def _state_of(self, ancestors: int, parents: tuple[bytes, ...]) -> State:
        """The state of an entry's ancestors: its parent's state after it, for an entry with
        one parent (its ancestors are the parent's and the parent), else the replay."""
        if len(parents) == 1:
            return self._after[parents[0]]
        members = [h for i, h in enumerate(self._order) if ancestors >> i & 1]
        return self._replay(members)

    def needs_new_epoch(self) -> bool:
        """Whether a device removed since the current epoch took effect may hold its secret:
        a removal whose author failed to start a new epoch after it (a crash between the two
        entries), or a merge that voided the epoch meant to follow a removal (SPEC.md
        §15.7). Then an admin starts a new one; until it does, new records reach the removed
        device's keys only if it still gets them, which no member sends it (§15.8)."""
        exposed = False
        for entry, reason in self.effects():
            if reason is not None:
                continue
            if isinstance(entry.action, RemoveMember | RemoveDevice):
                exposed = True
            elif isinstance(entry.action, NewEpoch):
                exposed = False
        return exposed

    def epochs(self) -> dict[int, bytes]:
        """The secret hash of each key epoch that took effect, by number: the epochs whose
        keys a device takes and seals with. A new-epoch entry voided in a merge names a
        secret that may have been sealed to a removed device, so its key is never taken."""
        return {
            entry.action.epoch: entry.action.secret_hash
            for entry, reason in self.effects()
            if reason is None and isinstance(entry.action, NewEpoch)
        }

    def effects(self) -> list[tuple[Entry, str | None]]:
        """Every entry in the order of effects (SPEC.md §15.4), each with why it took no
        effect (voided by a concurrent removal, or not valid at its turn), None if it did."""
        return self._effects(list(self._entries))[1]

    def _recompute(self) -> None:
        self._state = self._replay(list(self._entries))

    def _replay(self, hashes: list[bytes]) -> State:
        """The effect of a set of entries closed under parents, in the order every device
        computes, with concurrent removals winning (module docstring)."""
        return self._effects(hashes)[0]

    def _effects(self, hashes: list[bytes]) -> tuple[State, list[tuple[Entry, str | None]]]:
        """The state and each entry's effect (:meth:`effects`); removals are tried in hash
        order, so that the reason given does not depend on the order entries arrived in."""
        chosen = set(hashes)
        index = {h: i for i, h in enumerate(self._order)}
        removals = [
            self._entries[h]
            for h in sorted(chosen)
            if isinstance(self._entries[h].action, RemoveMember | RemoveDevice)
        ]
        state = State()
        effects: list[tuple[Entry, str | None]] = []
        for entry in self._effect_order(chosen):
            reason = self._voided(entry, removals, index) or check(state, entry)
            if reason is None:
                state = apply(state, entry)
            effects.append((entry, reason))
        return state, effects

    def _effect_order(self, chosen: set[bytes]) -> list[Entry]:
        children: dict[bytes, list[bytes]] = {h: [] for h in chosen}
        waiting = {h: 0 for h in chosen}
        for h in chosen:
            for parent in self._entries[h].parents:
                if parent in chosen:
                    children[parent].append(h)
                    waiting[h] += 1
        ready = [h for h, n in waiting.items() if n == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            h = heapq.heappop(ready)
            order.append(self._entries[h])
            for child in children[h]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, child)
        return order

    def _concurrent(self, a: Entry, b: Entry, index: dict[bytes, int]) -> bool:
        a_before_b = self._ancestors[b.hash] >> index[a.hash] & 1
        b_before_a = self._ancestors[a.hash] >> index[b.hash] & 1
        return a.hash != b.hash and not a_before_b and not b_before_a

    def _voided(self, entry: Entry, removals: list[Entry], index: dict[bytes, int]) -> str | None:
        """Why a removal concurrent with ``entry`` voids it (it removes who wrote it or whom
        it is for), or None."""
        if isinstance(entry.action, RemoveMember | RemoveDevice | Genesis):
            return None
        before = self._before[entry.hash]
        author = before.member_of(entry.author)
        authors = {author.id} if author is not None else set()
        action = entry.action
        targets = {action.member} if isinstance(action, SetRole | AddDevice) else set()
        wrapped = {d for d, _ in action.wrapped} if isinstance(action, NewEpoch) else set()
        # The members an epoch seals to: all in force with a device (not only the devices a
        # removal chose to credit, which may be none).
        sealed_to = {m.id for m in before.members.values() if m.devices & wrapped}
        for removal in removals:
            if not self._concurrent(entry, removal, index):
                continue
            gone = removal.action
            if isinstance(gone, RemoveMember):
                if gone.member in authors:
                    return "a concurrent removal of its author's member"
                if gone.member in targets:
                    return "a concurrent removal of the member it acts on"
                if gone.member in sealed_to:
                    return "a concurrent removal of a member it seals the secret to"
            elif isinstance(gone, RemoveDevice):
                if gone.device == entry.author:
                    return "a concurrent removal of its author device"
                if gone.device in wrapped:
                    return "a concurrent removal of a device it seals the secret to"
            if (
                isinstance(action, AddMember)
                and isinstance(gone, RemoveMember | RemoveDevice)
                and action.invitation in revoked_by(self._before[removal.hash], gone)
            ):
                return "a concurrent removal revokes the invitation it admits with"
        return None


def _credits_taken(
    target: Member, pairs: tuple[tuple[bytes, int], ...]
) -> tuple[tuple[bytes, int], ...]:
    """The credits an entry records for ``target``'s devices: none for a reader, which keeps
    what it was credited when it stopped writing. A reader's records are refused (SPEC.md
    §15.5), so no removal, demotion or leaving may credit them: else a reader leaving the
    folder (it may remove itself) would credit itself, and every member would take the
    changes it was to keep unshared, or any it backdated."""
    return pairs if target.role >= Role.WRITER else ()


def _credits(pairs: tuple[tuple[bytes, int], ...]) -> set[bytes]:
    return {device for device, _ in pairs}


def decode_log(folder_id: bytes, entries: list[Entry]) -> MembershipLog:
    """A log from its entries (the genesis among them); those refused are left out."""
    genesis = [e for e in entries if isinstance(e.action, Genesis)]
    if len(genesis) != 1:
        raise EntryMalformedError("a membership log has exactly one genesis entry")
    log = MembershipLog(folder_id, genesis[0])
    log.add(e for e in entries if e is not genesis[0])
    return log
