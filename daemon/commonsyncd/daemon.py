"""The daemon: the library's :class:`~commonsync.node.node.Node`, run as a service.

The Node does the syncing (folders, peers, discovery, relays, offers). Around it the daemon
adds what a long-running program for a person needs: the TOML configuration it reads at
start and writes back whenever a command changes it, the control socket the ``commonsync``
command talks to (:mod:`commonsyncd.api`), the check of the index left by the last run
(:mod:`commonsyncd.index_check`), the hourly pruning of each folder's versions under its
retention policy (:func:`commonsync.node.history.prune_periodically`), the configuration
file watched and applied live when a person edits it (:mod:`commonsyncd.reload`), and the
signals that stop it. SIGTERM or SIGINT cancels everything: the watchers stop, a write in
progress is abandoned safely (files are assembled in temporary files and renamed into place), the
sessions and the index close.
"""

from __future__ import annotations

import logging
import signal

import anyio
import anyio.to_thread

from commonsync.node.history import prune_periodically
from commonsync.node.node import Node
from commonsync.sync.store import open_store

from .api import ControlApi
from .config import Config
from .control import serve_control
from .home import Home
from .index_check import recover_index
from .reload import ConfigFile

log = logging.getLogger(__name__)


async def run_daemon(home: Home, *, watch: bool = True) -> None:
    """Run the daemon of ``home`` until SIGTERM or SIGINT."""
    home.require_initialised()
    config = Config.load(home.config_file)
    identity = home.load_identity()
    home.make_dirs()
    rebuild = await anyio.to_thread.run_sync(recover_index, home.state_file, home.socket_path)

    config_file = ConfigFile(home.config_file, config)
    async with open_store(home.state_file) as store, anyio.create_task_group() as tasks:
        # Before anything answers: a SIGTERM sent as soon as `status` works, while the node
        # still starts its folders, must stop the daemon cleanly too.
        await tasks.start(_stop_on_signal, tasks.cancel_scope)
        node = Node(
            home.node_home, config, identity, store, watch=watch, on_config_change=config_file.save
        )
        if rebuild is not None:
            node.notices.append(rebuild.notice())
        await node.prepare()  # status lists every folder as soon as the socket answers
        # First, since its lock says whether another daemon already runs with this home.
        api = ControlApi(node, config_problem=config_file.problem)
        await tasks.start(serve_control, home.socket_path, api.handle)
        await tasks.start(node.run)
        tasks.start_soon(prune_periodically, node.runners, node.store)  # versions retention
        tasks.start_soon(config_file.watch, node)  # config.toml edited by hand: applied


async def _stop_on_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log.info("stopping on %s", signal.Signals(signum).name)
            scope.cancel()
            return
