"""The daemon's configuration file, kept in step both ways while the daemon runs.

A command (or the control API) changes the running configuration; the daemon writes the
file at once (:meth:`ConfigFile.save`). A person (an editor, a script, configuration
management) changes the file; the daemon sees it within a second, watching the file's
directory with watchfiles (already used for the folders: no signal to send, no command to
remember), and applies the difference live through the same requests the commands make
(:meth:`commonsync.node.node.Node.reconfigure`): folders added, removed, moved, paused or
resumed, devices added, removed, renamed, paused or resumed, shares, relays. A setting the
node only takes when it starts (the port, discovery) is kept and applies at the next start.

A file the daemon cannot read (not TOML, a wrong value) changes nothing: the daemon goes on
with the configuration it has, logs why, and ``commonsync status`` says so (exit code 1)
until the file is fixed. If a command changes the configuration meanwhile, the unreadable
file is kept as ``config.toml.rejected`` (the log and status say so) before the file is
written anew, so that a person's edit is never lost. A change the file asks for that its
command would refuse (unsharing a member's device, a folder overlapping another) is refused
the same way, and said in status.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio
import anyio.to_thread
from watchfiles import Change, awatch

from commonsync.node.config import ConfigError, NodeConfig
from commonsync.node.node import Node

from .config import Config

log = logging.getLogger(__name__)

#: Quiet time after a write before the file is read (an editor writes in several steps).
DEBOUNCE_MS = 300
#: How often the watcher's thread looks up (and at its stop event), in milliseconds.
STEP_MS = 200
#: A file is applied once it reads the same twice this far apart (seconds): never one that
#: is still being written, which could read as a configuration with entries missing.
SETTLE = 0.5


class ConfigFile:
    """The TOML file of a running daemon's configuration ``config``."""

    def __init__(self, path: Path, config: Config) -> None:
        self.path = Path(os.path.abspath(path))
        self.config = config
        #: What the daemon last wrote (or read at start): a write of the file that leaves
        #: it so is the daemon's own, not a person's.
        self._written = _read(self.path)
        #: Why the file is not what runs, for status ("" when it is).
        self.error = ""
        self.hint = ""

    @property
    def rejected_file(self) -> Path:
        return self.path.with_name(self.path.name + ".rejected")

    def save(self, _changed: NodeConfig | None = None) -> None:
        """Write the running configuration (a command changed it). An edit of the file that
        could not be applied is kept aside first, as :attr:`rejected_file`."""
        if self.error and _read(self.path) != self._written:
            try:
                os.replace(self.path, self.rejected_file)
                log.warning(
                    "%s could not be applied; it is kept as %s, and the file is written anew "
                    "with the configuration that runs",
                    self.path,
                    self.rejected_file,
                )
            except OSError as exc:
                log.warning("cannot keep %s aside: %s", self.path, exc)
        self.config.save(self.path)
        self._written = _read(self.path)
        if self.error:
            self.error = f"{self.path} could not be applied (it is kept as {self.rejected_file})"
            self.hint = f"compare it with the file in use, {self.path}, and edit that one"

    async def watch(self, node: Node) -> None:
        """Apply every change made to the file by hand, until cancelled."""
        stop = anyio.Event()
        name = self.path.name

        def relevant(_change: Change, path: str) -> bool:
            return os.path.basename(path) == name

        try:
            async for _changes in awatch(
                self.path.parent,
                watch_filter=relevant,
                recursive=False,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                rust_timeout=10_000,
                yield_on_timeout=False,
                stop_event=stop,
            ):
                await self.reload(node)
        except (OSError, RuntimeError) as exc:
            log.warning(
                "cannot watch %s for changes (%s): a change made by hand applies when the "
                "daemon restarts",
                self.path,
                exc,
            )
        finally:
            stop.set()

    async def reload(self, node: Node) -> None:
        """Read the file again and apply what changed; a file that cannot be read changes
        nothing (the reason is in :attr:`error`)."""
        data = await anyio.to_thread.run_sync(_read, self.path)
        while True:
            if data == self._written or (data is None and self.error):
                return
            await anyio.sleep(SETTLE)
            again = await anyio.to_thread.run_sync(_read, self.path)
            if again == data:
                break
            data = again
        try:
            new = await anyio.to_thread.run_sync(Config.load, self.path)
            if self.config.folders and not new.folders:
                raise ConfigError(
                    f"{self.path} has no folder left: a file emptied by accident is not taken "
                    "for the removal of every folder; remove them one by one with "
                    "`commonsync folder remove FOLDER`"
                )
        except ConfigError as exc:
            self.error = f"{exc}; the daemon goes on with the configuration it had"
            self.hint = f"fix {self.path}: it is applied as soon as it is saved"
            log.error("configuration not applied: %s", exc)
            return
        self._written = data
        self.error = self.hint = ""
        done = await node.reconfigure(new)
        if done.applied:
            log.info("configuration changed by hand, applied: %s", "; ".join(done.applied))
        if done.refused:
            log.error("configuration changed by hand, refused: %s", "; ".join(done.refused))
            self.error = f"changes to {self.path} were refused: " + "; ".join(done.refused)
            self.hint = "the daemon runs without them: undo or fix them in the file"

    def problem(self) -> dict[str, str] | None:
        """The file's problem as ``status`` lists a device's problems, or None."""
        if not self.error:
            return None
        return {"problem": self.error.rstrip("."), "hint": self.hint.rstrip(".")}


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
