"""The control API's routes: what ``commonsync`` (or ``curl --unix-socket``) can ask.

    GET  /status                      this device, its folders, devices, pending devices and
                                      offered folders, with each folder's state in words;
                                      "log": where the daemon's log goes (kind, path)
    GET  /folders                     the folders (as in /status)
    POST /folders                     {"path", "label"}: sync a directory (a new folder)
    POST /folders/accept              {"folder", "path"}: accept a folder another device offered
    POST /folders/share               {"folder", "device", "role"}: offer a folder to a known
                                      device, as a member with that role (writer by default)
    POST /folders/rescan              {"folder"}: scan now
    POST /folders/confirm-deletions   {"folder"}: publish deletions the mass-deletion guard held
    GET  /devices                     known devices with their connection state, and pending ones
    POST /devices                     {"device", "name", "addresses"}: accept a device
    GET  /relays                      the community relays, connected or not (and why not)
    POST /relays                      {"relay"}: use a relay, given as RELAYID@HOST:PORT
    GET  /conflicts                   conflict copies on disk, per folder
    GET  /conflicts?folder=F          a folder's conflict copies: path, file, tag, recorded_by,
                                      time, size
    POST /conflicts/resolve           {"folder", "path", "keep", "cwd"}: resolve a conflict,
                                      keeping "mine", "theirs" or "both" (published as an edit)
    GET  /versions?folder=F&path=P&cwd=D  the kept versions of a folder (of P in it, if given)
    POST /versions/restore            {"folder", "path", "at", "cwd"}: put a kept version back
                                      (the newest, or the one kept at "at"), published as an
                                      edit; a relative path is from the folder's root, or from
                                      "cwd" when that directory is inside the folder
    POST /versions/prune              {"folder"}: apply the folder's retention policy now
    GET  /members?folder=F            a folder's members, their roles and devices
    POST /members/remove              {"folder", "member", "force"?}: remove a member (new epoch)
    POST /members/role                {"folder", "member", "role", "force"?}: change a member's
                                      role
    GET  /members/devices?folder=F[&member=M]  the devices of the members (or of one)
    POST /members/devices             {"folder", "member", "device"}: share the folder with a
                                      known device as another device of that member
    POST /devices/lost                {"folder", "device"}: remove one device of a member
                                      (a stolen phone; the member stays, a new key epoch)
    POST /invites                     {"folder", "role", "name", "expires", "uses", "code"}:
                                      invite someone; the answer holds the link to send
                                      them, and a short code unless "code" is false
    POST /invites/revoke              {"folder", "invitation"}: revoke an invitation
    POST /join                        {"link", "path" or "parent", "name"}: join a folder
                                      by invitation ("link": a link or a short code)
    GET  /ignores?folder=F            a folder's ignore patterns: for the whole folder
                                      (.csignore) and for this device only
    POST /ignores                     {"folder", "pattern", "this_device"}: ignore a pattern
                                      (applied at once: a rescan)
    POST /ignores/remove              {"folder", "pattern", "this_device"}: stop ignoring it
    GET  /limits                      bandwidth limits (bytes per second, 0: none), overall
                                      and per device
    POST /limits                      {"device" (optional), "send", "receive"}: set limits
                                      (rates like "500KiB/s", or bytes per second; 0 or
                                      "none": no limit), applied to running sessions at once
    GET  /events                      a stream of events, one JSON object per line
    POST /folders/remove, /folders/move, /folders/pause, /folders/resume, /folders/unshare,
    /devices/remove, /devices/pause, /devices/resume, /devices/rename: changing one's mind,
                                      applied at once (:mod:`commonsyncd.lifecycle_api`)

Errors are JSON ``{"error": ..., "hint": ...}`` with a 4xx status, or 503 when a folder
cannot do it now (a rescan of a folder whose disk is away: the error says why, the hint what
to do; the CLI's exit code is then 1); the CLI prints them as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from commonsync.errors import (
    InvalidRequestError,
    NotFoundError,
    RequestConflictError,
    RequestError,
    UnavailableError,
)
from commonsync.membership.entries import Role
from commonsync.node.limits import parse_rate
from commonsync.node.node import DEFAULT_INVITATION_LIFETIME, Node

from .control import ControlError, Request
from .lifecycle_api import route as lifecycle_route
from .logs import destination as log_destination

#: The HTTP status of each way a request to the Node can fail.
STATUS = {
    InvalidRequestError: 400,
    NotFoundError: 404,
    RequestConflictError: 409,
    UnavailableError: 503,
}


class ControlApi:
    """The routes above, on a running :class:`~commonsync.node.node.Node`."""

    def __init__(
        self, node: Node, *, config_problem: Callable[[], dict[str, str] | None] = lambda: None
    ) -> None:
        self._node = node
        #: The configuration file's problem (edited by hand, and not applied), for status.
        self._config_problem = config_problem

    async def handle(self, request: Request) -> Any:
        try:
            return await self._route(request)
        except RequestError as exc:
            status = next((s for kind, s in STATUS.items() if isinstance(exc, kind)), 400)
            raise ControlError(status, str(exc), hint=exc.hint) from None

    async def _route(self, request: Request) -> Any:
        route = (request.method, request.path.rstrip("/") or "/")
        node = self._node
        body = request.body if isinstance(request.body, dict) else {}
        match route:
            case ("GET", "/status"):
                status = {**node.status(), "log": log_destination()}
                problem = self._config_problem()
                status["config_error"] = problem["problem"] if problem else ""
                if problem is not None:  # listed with the device's problems: exit code 1
                    status["problems"] = [*status.get("problems", []), problem]
                return status
            case ("GET", "/folders"):
                status = node.status()
                return {"folders": status["folders"], "offered": status["offered_folders"]}
            case ("POST", "/folders"):
                path = Path(_text(body, "path"))
                label = str(body.get("label") or Path(path).name)
                runner = await node.add_folder(path, label)
                return runner.status()
            case ("POST", "/folders/accept"):
                runner = await node.accept_folder(_text(body, "folder"), Path(_text(body, "path")))
                return runner.status()
            case ("POST", "/folders/share"):
                role = _role(body.get("role") or "writer")
                folder, device = await node.share(
                    _text(body, "folder"), _text(body, "device"), role=role
                )
                return {
                    "folder": folder.label,
                    "device": str(device.device_id),
                    "role": role.name.lower(),
                }
            case ("GET", "/members"):
                return node.members(_text(dict(request.query), "folder"))
            case ("POST", "/members/remove"):
                return await node.remove_member(
                    _text(body, "folder"), _text(body, "member"), force=body.get("force") is True
                )
            case ("POST", "/invites"):
                return await node.invite(
                    _text(body, "folder"),
                    role=_role(body.get("role") or "writer"),
                    name=str(body.get("name") or ""),
                    expires=_number(body, "expires", DEFAULT_INVITATION_LIFETIME),
                    uses=int(_number(body, "uses", 1)),
                    code=body.get("code", True) is not False,
                )
            case ("POST", "/invites/revoke"):
                return await node.revoke_invitation(
                    _text(body, "folder"), _text(body, "invitation")
                )
            case ("POST", "/join"):
                runner = await node.join(
                    _text(body, "link"),
                    Path(_text(body, "path")) if body.get("path") else None,
                    name=str(body.get("name") or ""),
                    parent=Path(_text(body, "parent")) if body.get("parent") else None,
                )
                return runner.status()
            case ("GET", "/members/devices"):
                query = dict(request.query)
                member = query.get("member") or None
                return node.member_devices(_text(query, "folder"), member)
            case ("POST", "/members/devices"):
                return await node.add_member_device(
                    _text(body, "folder"), _text(body, "member"), _text(body, "device")
                )
            case ("POST", "/devices/lost"):
                return await node.device_lost(_text(body, "folder"), _text(body, "device"))
            case ("POST", "/members/role"):
                return await node.set_role(
                    _text(body, "folder"),
                    _text(body, "member"),
                    _role(body.get("role")),
                    force=body.get("force") is True,
                )
            case ("POST", "/folders/rescan"):
                reference = _text(body, "folder")
                report = await node.rescan(reference)
                return {"folder": node.folder(reference).status(), "report": str(report)}
            case ("POST", "/folders/confirm-deletions"):
                reference = _text(body, "folder")
                report = await node.rescan(reference, confirm_deletions=True)
                return {"folder": node.folder(reference).status(), "deleted": report.deleted}
            case ("GET", "/devices"):
                return {
                    "devices": node.peers.status(),
                    "pending": node.peers.pending_status(),
                }
            case ("POST", "/devices"):
                addresses = body.get("addresses") or []
                if not isinstance(addresses, list) or not all(
                    isinstance(a, str) for a in addresses
                ):
                    raise ControlError(400, "addresses must be a list of HOST:PORT strings")
                device = await node.add_device(
                    _text(body, "device"), name=str(body.get("name") or ""), addresses=addresses
                )
                return {
                    "id": str(device.device_id),
                    "name": device.name,
                    "addresses": device.addresses,
                }
            case ("GET", "/relays"):
                return {"relays": node.peers.relays.status()}
            case ("POST", "/relays"):
                relay = await node.add_relay(_text(body, "relay"))
                return {"id": str(relay.relay_id), "address": relay.address}
            case ("GET", "/conflicts") if request.query.get("folder"):
                reference = _text(dict(request.query), "folder")
                return {
                    "folder": node.folder(reference).label,
                    "conflicts": await node.conflicts(reference),
                }
            case ("POST", "/conflicts/resolve"):
                return await node.resolve_conflict(
                    _text(body, "folder"),
                    _text(body, "path"),
                    _text(body, "keep"),
                    cwd=_optional(body, "cwd"),
                )
            case ("GET", "/versions"):
                query = dict(request.query)
                reference = _text(query, "folder")
                return {
                    "folder": node.folder(reference).label,
                    "versions": await node.versions(
                        reference, query.get("path") or None, cwd=query.get("cwd") or None
                    ),
                }
            case ("POST", "/versions/restore"):
                at = body.get("at")
                if at is not None and (
                    isinstance(at, bool) or not isinstance(at, str | int | float)
                ):
                    raise ControlError(400, "'at' must be a time (a string) or seconds (a number)")
                return await node.restore(
                    _text(body, "folder"), _text(body, "path"), at, cwd=_optional(body, "cwd")
                )
            case ("POST", "/versions/prune"):
                return await node.prune_versions(_text(body, "folder"))
            case ("GET", "/conflicts"):
                return {
                    "folders": [
                        {
                            "label": runner.label,
                            "path": str(runner.root),
                            "conflicts": runner.conflict_copies(),
                        }
                        for runner in node.runners.values()
                    ]
                }
            case ("GET", "/ignores"):
                return await node.ignores(_text(dict(request.query), "folder"))
            case ("POST", "/ignores" | "/ignores/remove"):
                change = node.add_ignore if route[1] == "/ignores" else node.remove_ignore
                return await change(
                    _text(body, "folder"),
                    _text(body, "pattern"),
                    this_device=body.get("this_device") is True,
                )
            case ("GET", "/limits"):
                return node.limits_status()
            case ("POST", "/limits"):
                rates = {k: parse_rate(body[k]) for k in ("send", "receive") if k in body}
                return await node.set_limits(_optional(body, "device"), **rates)
            case ("GET", "/events"):
                return self._events(replay=request.query.get("replay") == "1")
        answer = await lifecycle_route(node, request.method, route[1], body)
        if answer is not None:
            return answer
        raise ControlError(
            404,
            f"no such request: {request.method} {request.path}",
            hint="see the list in `commonsyncd.api`",
        )

    async def _events(self, *, replay: bool) -> AsyncIterator[dict[str, Any]]:
        async for event in self._node.events(replay=replay):
            yield event


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(400, f"{name!r} must be a number")
    return float(value)


def _role(value: Any) -> Role:
    names = [r.name.lower() for r in Role]
    if not isinstance(value, str) or value.lower() not in names:
        raise ControlError(400, f"a role is one of {', '.join(names)}")
    return Role[value.upper()]


def _optional(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ControlError(400, f"{name!r} must be a string")
    return value or None


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ControlError(400, f"the request needs a {name!r} string")
    return value
