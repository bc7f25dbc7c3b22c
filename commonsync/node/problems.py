"""What a folder refused from others, in one sentence per problem with what to do about it:
the ``problems`` of a folder's status (``commonsync status`` exits with 1 while there are
any).

Versions whose author the membership log lets write no more, or never did (SPEC.md §15.5),
are told per author with their member's name and role; other refused versions and refused
membership entries per device and reason (they are counted once per kind, see
:mod:`commonsync.sync.refusals`); a peer that serves an older log than it showed before (a
rollback, §15.8) per peer. This device's own changes that no member takes (it is a reader)
are not a problem: the folder's summary says so.
"""

from __future__ import annotations

from ..formats.device_id import DeviceId
from ..membership.entries import AddDevice, AddMember, Genesis, Role
from ..membership.log import MembershipLog, State
from ..sync.folder import Folder
from .progress import NAME_REFUSAL

#: What the engine says of a version refused for its author's role (the other refusals'
#: reasons are told as they are).
_ROLE_REFUSAL = "is not a writer of this folder"


def folder_problems(folder: Folder, label: str) -> list[dict[str, str]]:
    """Each problem of ``folder`` (labelled ``label``): ``{"problem", "hint"}``."""
    members = folder.members
    state, log_ = members.state, members.log
    problems = []
    for author, count in sorted(folder.refused_authors.items()):
        problems.append(_refused_author(state, log_, author, count, label))
    for refusal in folder.refusals():
        if _ROLE_REFUSAL in refusal.reason or refusal.reason == NAME_REFUSAL:
            continue  # told per author above; names: by commonsync.node.progress
        problems.append(
            {
                "problem": f"refused {_changes(refusal.count)} from "
                f"{_who_by_short(state, refusal.device)}: {refusal.reason}",
                "hint": "that device sends versions this one cannot take (a modified or outdated "
                "client?); nothing of them was written here",
            }
        )
    for refusal in folder.log_refusals:
        what = f"{refusal.count} membership entr{'y' if refusal.count == 1 else 'ies'}"
        problems.append(
            {
                "problem": f"refused {what} from {_who_by_short(state, refusal.device)} of "
                f"{label}: {refusal.reason}",
                "hint": "the folder's rules do not allow them (a modified or outdated client?): "
                "they have no effect here, nor on any other member's device",
            }
        )
    for peer, lacking in sorted(members.rollbacks.items()):
        short = DeviceId.from_public_key(peer).short_str
        problems.append(
            {
                "problem": f"{who(state, log_, peer)} serves an older membership log of {label}: "
                f"it lacks {lacking} entr{'y' if lacking == 1 else 'ies'} it held before, so its "
                "log is refused (this device keeps its own, takes no entry from it and sends "
                "it what it lacks)",
                "hint": "if this lasts, look at that device (restored from an old backup?); a "
                f"lost one is removed with `commonsync device lost {label} {short}`",
            }
        )
    return problems


def _refused_author(
    state: State | None, log_: MembershipLog | None, author: bytes, count: int, label: str
) -> dict[str, str]:
    member = state.member_of(author) if state is not None else None
    named = who(state, log_, author)
    changes = _changes(count)
    if member is not None and member.role is Role.READER:
        return {
            "problem": f"refused {changes} from {named} (a reader of {label}): readers' changes "
            "are not shared",
            "hint": f"if {member.name} should write, an admin makes them a writer: `commonsync "
            f"member role {label} {DeviceId.from_public_key(author).short_str} writer`",
        }
    if member is not None:
        return {
            "problem": f"refused {changes} from {named} of {label}, made while they could not "
            "write (before they became a writer, or after the last version credited to them)",
            "hint": "nothing to do: now that they write, their device sends again those it "
            "still holds, and they are taken",
        }
    if state is not None and author in state.credited:
        return {
            "problem": f"refused {changes} from {named}, which was removed from {label}: what it "
            f"made after version {state.credited[author]} (the last credited at its removal) "
            "is not taken",
            "hint": "nothing to do: the removal holds. If it should write again, an admin "
            "shares the folder with it again",
        }
    return {
        "problem": f"refused {changes} from {named}, which is not a member of {label}",
        "hint": "if it should write, an admin shares the folder with it (`commonsync share`)",
    }


def _changes(count: int) -> str:
    return "1 change" if count == 1 else f"{count} changes"


def who(state: State | None, log_: MembershipLog | None, device: bytes) -> str:
    """A device as its member's name and its short ID (also a removed device's former
    member, from the log); also how ``conflicts list`` names the device that recorded a copy."""
    short = DeviceId.from_public_key(device).short_str
    member = state.member_of(device) if state is not None else None
    name = member.name if member is not None else _former_member(log_, device)
    return f"{name} (device {short})" if name else f"device {short}"


def _who_by_short(state: State | None, short: str) -> str:
    """A device told by its short ID (as refusals count them), with its member's name."""
    for member in state.members.values() if state is not None else ():
        for device in member.devices:
            if DeviceId.from_public_key(device).short_str == short:
                return f"{member.name} (device {short})"
    return f"device {short}" if short else "this device"


def _former_member(log_: MembershipLog | None, device: bytes) -> str:
    """The name of the member ``device`` belonged to, from the log ("" if none)."""
    if log_ is None:
        return ""
    names: dict[bytes, str] = {}
    found = b""
    for entry in log_.entries():
        action = entry.action
        if isinstance(action, Genesis):
            names[entry.hash] = action.name
            if entry.author == device:
                found = entry.hash
        elif isinstance(action, AddMember):
            names[entry.hash] = action.name
            if device in action.devices:
                found = entry.hash
        elif isinstance(action, AddDevice) and action.device == device:
            found = action.member
    return names.get(found, "")
