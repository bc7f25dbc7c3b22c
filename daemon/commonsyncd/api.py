"""The control API's routes: what ``commonsync`` (or ``curl --unix-socket``) can ask.

    GET  /status                      this device, its folders, devices, pending devices and
                                      offered folders, with each folder's state in words
    GET  /folders                     the folders (as in /status)
    POST /folders                     {"path", "label"}: sync a directory (a new folder)
    POST /folders/accept              {"folder", "path"}: accept a folder another device offered
    POST /folders/share               {"folder", "device"}: offer a folder to a known device
    POST /folders/rescan              {"folder"}: scan now
    POST /folders/confirm-deletions   {"folder"}: publish deletions the mass-deletion guard held
    GET  /devices                     known devices with their connection state, and pending ones
    POST /devices                     {"device", "name", "addresses"}: accept a device
    GET  /relays                      the community relays, connected or not (and why not)
    POST /relays                      {"relay"}: use a relay, given as RELAYID@HOST:PORT
    GET  /conflicts                   conflict copies on disk, per folder
    GET  /events                      a stream of events, one JSON object per line

Errors are JSON ``{"error": ..., "hint": ...}`` with a 4xx status, or 503 when a folder
cannot do it now (a rescan of a folder whose disk is away: the error says why, the hint what
to do; the CLI's exit code is then 1); the CLI prints them as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .control import ControlError, Request
from .daemon import Daemon


class ControlApi:
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def handle(self, request: Request) -> Any:
        route = (request.method, request.path.rstrip("/") or "/")
        daemon = self._daemon
        body = request.body if isinstance(request.body, dict) else {}
        match route:
            case ("GET", "/status"):
                return daemon.status()
            case ("GET", "/folders"):
                status = daemon.status()
                return {"folders": status["folders"], "offered": status["offered_folders"]}
            case ("POST", "/folders"):
                path = Path(_text(body, "path"))
                label = str(body.get("label") or Path(path).name)
                runner = await daemon.add_folder(path, label)
                return runner.status()
            case ("POST", "/folders/accept"):
                runner = await daemon.accept_folder(
                    _text(body, "folder"), Path(_text(body, "path"))
                )
                return runner.status()
            case ("POST", "/folders/share"):
                folder, device = await daemon.share(_text(body, "folder"), _text(body, "device"))
                return {"folder": folder.label, "device": str(device.device_id)}
            case ("POST", "/folders/rescan"):
                return await daemon.rescan(_text(body, "folder"))
            case ("POST", "/folders/confirm-deletions"):
                return await daemon.confirm_deletions(_text(body, "folder"))
            case ("GET", "/devices"):
                return {
                    "devices": daemon.peers.status(),
                    "pending": daemon.peers.pending_status(),
                }
            case ("POST", "/devices"):
                addresses = body.get("addresses") or []
                if not isinstance(addresses, list) or not all(
                    isinstance(a, str) for a in addresses
                ):
                    raise ControlError(400, "addresses must be a list of HOST:PORT strings")
                device = await daemon.add_device(
                    _text(body, "device"), str(body.get("name") or ""), addresses
                )
                return {
                    "id": str(device.device_id),
                    "name": device.name,
                    "addresses": device.addresses,
                }
            case ("GET", "/relays"):
                return {"relays": daemon.peers.relays.status()}
            case ("POST", "/relays"):
                relay = await daemon.add_relay(_text(body, "relay"))
                return {"id": str(relay.relay_id), "address": relay.address}
            case ("GET", "/conflicts"):
                return {
                    "folders": [
                        {
                            "label": runner.label,
                            "path": str(runner.root),
                            "conflicts": runner.conflict_copies(),
                        }
                        for runner in daemon.runners.values()
                    ]
                }
            case ("GET", "/events"):
                return self._events(replay=request.query.get("replay") == "1")
        raise ControlError(
            404,
            f"no such request: {request.method} {request.path}",
            hint="see the list in `commonsyncd.api`",
        )

    async def _events(self, *, replay: bool) -> AsyncIterator[dict[str, Any]]:
        async for event in self._daemon.events.subscribe(replay=replay):
            yield event


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ControlError(400, f"the request needs a {name!r} string")
    return value
