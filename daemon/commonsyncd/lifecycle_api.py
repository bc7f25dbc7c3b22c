"""The control API's routes for changing one's mind (:mod:`commonsync.node.lifecycle`), each
applied by the running daemon at once:

    POST /folders/remove    {"folder"}: stop syncing a folder, forget its index and keys
                            (its files stay on disk)
    POST /folders/move      {"folder", "path"}: sync the folder at another place (found
                            there, renamed there, or started there if it never held files)
    POST /folders/pause     {"folder"}: no scanning, no exchange until resumed
    POST /folders/resume    {"folder"}
    POST /folders/unshare   {"folder", "device"}: stop syncing a folder with a device
    POST /devices/remove    {"device"}: forget a device (unshared from every folder)
    POST /devices/pause     {"device"}: no session with it until resumed
    POST /devices/resume    {"device"}
    POST /devices/rename    {"device", "name"}

A device is named by its name here, its ID or a unique prefix of it; a folder by its label,
ID or a unique prefix of it. Errors are those of :mod:`commonsyncd.api`.
"""

from __future__ import annotations

from typing import Any

from commonsync.node.node import Node

from .control import ControlError

#: Route → (the Node's method, the body's fields it takes, in order).
ROUTES: dict[str, tuple[str, tuple[str, ...]]] = {
    "/folders/remove": ("remove_folder", ("folder",)),
    "/folders/move": ("move_folder", ("folder", "path")),
    "/folders/pause": ("pause_folder", ("folder",)),
    "/folders/resume": ("resume_folder", ("folder",)),
    "/folders/unshare": ("unshare", ("folder", "device")),
    "/devices/remove": ("remove_device", ("device",)),
    "/devices/pause": ("pause_device", ("device",)),
    "/devices/resume": ("resume_device", ("device",)),
    "/devices/rename": ("rename_device", ("device", "name")),
}


async def route(node: Node, method: str, path: str, body: dict[str, Any]) -> Any:
    """The answer to a lifecycle request, or None if ``method`` and ``path`` name none."""
    found = ROUTES.get(path) if method == "POST" else None
    if found is None:
        return None
    name, fields = found
    arguments = []
    for field in fields:
        value = body.get(field)
        if not isinstance(value, str) or not value:
            raise ControlError(400, f"the request needs a {field!r} string")
        arguments.append(value)
    return await getattr(node, name)(*arguments)
