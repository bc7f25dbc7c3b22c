"""Two real Syncthing instances on loopback, to compare commonsync against on the same data.

The reference is described in bench/README.md ("sync"): the Debian package
``syncthing``, two instances with separate ``--home`` directories, listening on 127.0.0.1
only, with global and local discovery, relays, NAT traversal, usage and crash reporting and
upgrade checks all disabled, paired and given one shared folder through the REST API.

``ensure_syncthing()`` finds the binary (installing the package as root when it is missing);
``SyncthingPair`` is a context manager that starts both instances, pairs them, shares the
folder and stops both again, whatever happens::

    with SyncthingPair(base, folder_a, folder_b, watcher_delay=1) as pair:
        pair.rescan("a")            # Syncthing knows of a change only once it has scanned it
        pair.wait_in_sync(120)      # then check the files' hashes yourself (.stfolder aside)
        sent = pair.bytes_sent("a")

Nothing ever listens on anything but 127.0.0.1: the network options are written into
``config.xml`` before the first start (so that not even the first seconds use the defaults,
which listen on every interface and broadcast local discovery on UDP 21027), then set again
and checked through the REST API. Only the standard library is used (``urllib.request`` with
the ``X-API-Key`` header). ``python -m bench.syncthing`` runs a short self-check.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from .report import Skipped

#: The Debian package, and where it puts the binary.
PACKAGE = "syncthing"
DEFAULT_BINARY = "/usr/bin/syncthing"
#: Bound on ``apt-get install`` (and the ``apt-get update`` it may need first), in all.
INSTALL_S = 300.0
#: Bound on ``syncthing generate`` and ``syncthing --version``.
GENERATE_S = 30.0
#: Bound on an instance's start, until its REST API answers.
STARTUP_S = 30.0
#: Bound on the two instances finding each other once both are configured.
CONNECT_S = 60.0
#: Bound on one REST call (a scan has its own, longer, bound).
HTTP_S = 10.0
#: Bound on a clean exit after /rest/system/shutdown, then after SIGTERM, then after SIGKILL.
SHUTDOWN_S = 10.0
TERM_S = 5.0
KILL_S = 5.0
#: Default bound on a scan requested with rescan() (it returns when the scan is done).
SCAN_S = 600.0
#: Interval between two polls of the REST API.
POLL_S = 0.1

#: The shared folder's ID, the same on both sides.
FOLDER_ID = "commonsync-bench"
SIDES = ("a", "b")
LOOPBACK = "127.0.0.1"

#: Environment variables removed from the instances' environment: Syncthing dials through
#: ``ALL_PROXY`` if it is set, and the benchmark must stay on loopback.
PROXY_VARIABLES = frozenset(
    {"all_proxy", "http_proxy", "https_proxy", "no_proxy", "ftp_proxy", "socks_proxy"}
)


class SyncthingError(RuntimeError):
    """Syncthing did not start, answer, connect or stop as expected; the message says why."""


# --- the binary -------------------------------------------------------------------------------


def ensure_syncthing() -> str:
    """Path of the syncthing binary.

    When it is missing, installs the Debian package with ``apt-get install -y syncthing``
    (quietly, non-interactively, at most INSTALL_S in all; when the install cannot find the
    package, ``apt-get update`` then a second try), but only when running as root and
    apt-get exists. Raises ``Skipped`` with the reason when there is no working binary in the end.
    """
    binary = _find_binary()
    if binary is None:
        _install_package()
        binary = _find_binary()
        if binary is None:
            raise Skipped(f"apt-get installed {PACKAGE}, but no syncthing binary is on PATH")
    try:
        done = _run_version(binary)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Skipped(f"{binary} --version failed: {exc}") from None
    if done.returncode != 0:
        raise Skipped(f"{binary} --version failed: {_last_lines(done.stderr or done.stdout)}")
    return binary


def syncthing_version(binary: str) -> str:
    """The first line of ``syncthing --version``, e.g. 'syncthing v1.19.2-ds1 "Fermium
    Flea" (go1.19.8 linux-amd64) ...', for the benchmark's notes."""
    return (_run_version(binary).stdout.strip().splitlines() or ["unknown version"])[0]


def _run_version(binary: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, "--version"],
        capture_output=True,
        text=True,
        timeout=GENERATE_S,
        check=False,
        env=_child_environment(),
    )


def _find_binary() -> str | None:
    found = shutil.which("syncthing")
    if found is not None:
        return found
    if os.access(DEFAULT_BINARY, os.X_OK):
        return DEFAULT_BINARY
    return None


def ensure_tool(binary: str, package: str) -> str:
    """Path of ``binary``, installing the Debian ``package`` first where it is missing (see
    :func:`install_package`); Skipped when it cannot be had."""
    found = shutil.which(binary)
    if found is None:
        install_package(package)
        found = shutil.which(binary)
        if found is None:
            raise Skipped(f"apt-get installed {package}, but no {binary} is on PATH")
    return found


def _install_package() -> None:
    install_package(PACKAGE)


def install_package(package: str) -> None:
    """``apt-get install -y PACKAGE``, bounded; Skipped when it is not possible or fails."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise Skipped(
            f"{package} is not installed and this is not root: install it with "
            f"`apt-get install {package}`"
        )
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise Skipped(f"{package} is not installed and there is no apt-get to install it with")
    deadline = time.monotonic() + INSTALL_S
    install = [apt_get, "install", "-y", "-q", "--no-install-recommends", package]
    print(f"installing {package} with apt-get (at most {INSTALL_S:.0f} s)...", flush=True)
    code, output = _run_bounded(install, deadline)
    if code != 0 and "Unable to locate package" in output:
        # A fresh image often has empty package lists.
        code, output = _run_bounded([apt_get, "update", "-q"], deadline)
        if code == 0:
            code, output = _run_bounded(install, deadline)
    if code != 0:
        raise Skipped(f"`apt-get install -y {package}` failed: {_last_lines(output)}")


def _run_bounded(command: list[str], deadline: float) -> tuple[int, str]:
    """Runs a command in its own process group until the deadline; on a timeout, kills the
    whole group and raises Skipped."""
    env = _child_environment(keep_proxies=True)
    env["DEBIAN_FRONTEND"] = "noninteractive"
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if sys.exc_info()[0] is subprocess.TimeoutExpired:
                raise Skipped(
                    f"`{' '.join(command)}` did not finish within {INSTALL_S:.0f} s and was "
                    f"killed (dpkg may need `dpkg --configure -a`)"
                ) from None
            raise
        return process.returncode, output


def _last_lines(text: str, lines: int = 5) -> str:
    tail = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(tail) if tail else "(no output)"


def _child_environment(*, keep_proxies: bool = False, inner: bool = False) -> dict[str, str]:
    """The environment for a syncthing command; ``inner`` for ``syncthing serve`` run as one
    process."""
    env = {
        name: value
        for name, value in os.environ.items()
        if keep_proxies or name.lower() not in PROXY_VARIABLES
    }
    env.pop("STMONITORED", None)
    env.update(
        STNODEFAULTFOLDER="1",  # no "Default Folder" in ~/Sync on the first start
        STNOUPGRADE="1",  # no upgrade checks
        STNORESTART="1",  # no restarts (a crash or a restart request ends the instance)
    )
    if inner:
        # Syncthing 1.19's `serve` always forks: a monitor process starts the real one with
        # STMONITORED set, --no-restart or not. Setting it here runs the real one directly,
        # so each instance is one process whose CPU time and memory are the instance's.
        env["STMONITORED"] = "yes"
    return env


def _descendants(pid: int) -> list[int]:
    """The living descendants of ``pid`` (Linux /proc; none elsewhere)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


# --- one instance -----------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held together while chosen, then released)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


#: What every instance's options must say (the names are the REST API's JSON keys).
OPTIONS: dict[str, Any] = {
    "globalAnnounceEnabled": False,
    "localAnnounceEnabled": False,  # it broadcasts and multicasts on UDP 21027
    "relaysEnabled": False,
    "natEnabled": False,  # UPnP / NAT-PMP
    "announceLANAddresses": False,
    "urAccepted": -1,  # usage reporting declined
    "crashReportingEnabled": False,
    "autoUpgradeIntervalH": 0,
    "startBrowser": False,
    "restartOnWakeup": False,
    # By default Syncthing renices itself (niceness 9, I/O best-effort 5). commonsync's daemon
    # does not, so the reference competes for the CPU on equal terms.
    "setLowPriority": False,
}

#: The same, as config.xml spells them, written before the first start.
XML_OPTIONS: dict[str, str] = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "announceLANAddresses": "false",
    "urAccepted": "-1",
    "crashReportingEnabled": "false",
    "autoUpgradeIntervalH": "0",
    "startBrowser": "false",
    "restartOnWakeup": "false",
    "setLowPriority": "false",
}


class _Instance:
    """One Syncthing process: its home, ports, API key, device ID and REST calls."""

    def __init__(self, side: str, binary: str, home: Path, gui_port: int, sync_port: int) -> None:
        self.side = side
        self.binary = binary
        self.home = home
        self.gui_port = gui_port
        self.sync_port = sync_port
        self.log_path = home / "syncthing.log"
        self.api_key = ""
        self.device_id = ""
        self.process: subprocess.Popen[bytes] | None = None
        #: Every process ID this instance was seen to run as (see pids()).
        self.seen: set[int] = set()
        self._log: IO[bytes] | None = None
        # No proxy, whatever the environment says: every request goes to 127.0.0.1.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def sync_address(self) -> str:
        return f"tcp://{LOOPBACK}:{self.sync_port}"

    def generate(self) -> None:
        """``syncthing generate``, then the loopback-only options written into config.xml."""
        try:
            done = subprocess.run(
                [
                    self.binary,
                    "generate",
                    f"--home={self.home}",
                    "--no-default-folder",
                    "--skip-port-probing",
                ],
                capture_output=True,
                text=True,
                timeout=GENERATE_S,
                check=False,
                env=_child_environment(),
            )
        except subprocess.TimeoutExpired:
            raise SyncthingError(
                f"syncthing {self.side}: `syncthing generate` took more than {GENERATE_S:.0f} s"
            ) from None
        if done.returncode != 0:
            raise SyncthingError(
                f"syncthing {self.side}: `syncthing generate` failed: "
                f"{_last_lines(done.stderr + done.stdout)}"
            )
        config = self.home / "config.xml"
        tree = ET.parse(config)
        root = tree.getroot()
        device = root.find("device")
        gui = root.find("gui")
        options = root.find("options")
        if device is None or gui is None or options is None:
            raise SyncthingError(f"syncthing {self.side}: unexpected {config}")
        self.device_id = device.get("id", "")
        device.set("name", f"bench-{self.side}")
        self.api_key = _xml_text(gui, "apikey")
        if not self.device_id or not self.api_key:
            raise SyncthingError(f"syncthing {self.side}: no device ID or API key in {config}")
        _set_xml_text(gui, "address", f"{LOOPBACK}:{self.gui_port}")
        for listen in options.findall("listenAddress"):
            options.remove(listen)
        ET.SubElement(options, "listenAddress").text = self.sync_address
        for name, value in XML_OPTIONS.items():
            _set_xml_text(options, name, value)
        tree.write(config, encoding="utf-8")

    def start(self) -> None:
        """Starts ``syncthing serve`` with its output in syncthing.log."""
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                self.binary,
                "serve",
                f"--home={self.home}",
                f"--gui-address=http://{LOOPBACK}:{self.gui_port}",
                "--no-browser",
                "--no-restart",
                "--no-upgrade",
                "--no-default-folder",
                "--skip-port-probing",
                "--logflags=3",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_child_environment(inner=True),
            # Its own session: Ctrl-C reaches only this process, whose clean-up then stops
            # Syncthing in order. The death signal kills it should this process be killed.
            start_new_session=True,
            preexec_fn=_death_signal(),
        )

    def wait_ready(self, timeout: float) -> None:
        """Until the REST API answers; SyncthingError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                self.request("GET", "/rest/system/ping", timeout=2.0)
            except SyncthingError:
                if time.monotonic() > deadline:
                    raise SyncthingError(
                        f"syncthing {self.side}: REST API on 127.0.0.1:{self.gui_port} did not "
                        f"answer within {timeout:.0f} s; log: {self.log_tail()}"
                    ) from None
                time.sleep(POLL_S)
            else:
                return

    def check_alive(self) -> None:
        if self.process is None:
            raise SyncthingError(f"syncthing {self.side} is not running")
        code = self.process.poll()
        if code is not None:
            raise SyncthingError(
                f"syncthing {self.side} exited with status {code}; log: {self.log_tail()}"
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        """The process and its descendants (none with STMONITORED), all remembered so that
        stop() can make sure each of them is gone."""
        if self.process is None or not self.running():
            return []
        pids = [self.process.pid, *_descendants(self.process.pid)]
        self.seen.update(pids)
        return pids

    def signal_group(self, signum: int) -> None:
        """``signum`` to the instance's process group (its own session), then to any
        descendant seen that may have left it."""
        if self.process is None:
            return
        if self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)
        for pid in self.seen - {self.process.pid}:
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)

    def leftovers(self) -> list[int]:
        """Processes of this instance still alive (the main one reaped or not)."""
        if self.process is None:
            return []
        left = [self.process.pid] if self.running() else []
        return left + [p for p in sorted(self.seen - {self.process.pid}) if _pid_alive(p)]

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        timeout: float = HTTP_S,
    ) -> Any:
        """One REST call: the decoded JSON answer (None when empty). SyncthingError on any
        failure, with the HTTP status and Syncthing's message."""
        url = f"http://{LOOPBACK}:{self.gui_port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("X-API-Key", self.api_key)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                payload: bytes = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise SyncthingError(
                f"syncthing {self.side}: {method} {path} -> HTTP {exc.code}: {detail}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SyncthingError(
                f"syncthing {self.side}: {method} {path} failed: {reason}"
            ) from None
        if not payload.strip():
            return None
        try:
            return json.loads(payload)
        except ValueError:
            return payload.decode(errors="replace")

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return _last_lines(text, lines)

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _xml_text(parent: ET.Element, tag: str) -> str:
    child = parent.find(tag)
    return (child.text or "").strip() if child is not None else ""


def _set_xml_text(parent: ET.Element, tag: str, text: str) -> None:
    child = parent.find(tag)
    if child is None:
        child = ET.SubElement(parent, tag)
    child.text = text


_PR_SET_PDEATHSIG = 1


def _death_signal() -> Any:
    """A preexec_fn asking Linux to SIGKILL the child when its parent dies, so that Syncthing
    cannot outlive a benchmark killed with SIGKILL (its home is left behind then anyway, so
    there is nothing to shut down cleanly; with SIGTERM it took up to 2.5 s). Only from the
    main thread: the signal follows the thread that started the child, not the process."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


# --- the pair ---------------------------------------------------------------------------------


class SyncthingPair:
    """Two Syncthing instances ("a" and "b") with separate homes under ``base``, GUI/REST on
    127.0.0.1 random free ports, sync listening on tcp://127.0.0.1:<free port> only, with
    global discovery, local discovery, relays, NAT traversal, usage reporting, crash
    reporting and upgrade checks all disabled (and no self-renicing), paired with each other
    (static addresses, no introducer) and sharing one folder (ID FOLDER_ID): ``folder_a`` on
    a, ``folder_b`` on b, both sendreceive, fsWatcher enabled with fsWatcherDelayS =
    ``watcher_delay`` (Syncthing's default is 10), rescanIntervalS 3600.

    Use as a context manager: ``__enter__`` generates both configurations, starts both,
    configures them through the REST API and returns once they are connected to each other;
    ``__exit__`` stops both (/rest/system/shutdown, then SIGTERM, then SIGKILL) and removes
    the homes. No process survives it, on exceptions and KeyboardInterrupt included.

    Syncthing creates its folder marker, a directory ``.stfolder``, in both folders: leave it
    out when comparing the trees.
    """

    def __init__(
        self,
        base: Path,
        folder_a: Path,
        folder_b: Path,
        *,
        watcher_delay: float = 10.0,
        binary: str | None = None,
    ) -> None:
        self.base = Path(base)
        self.folders = {"a": Path(folder_a).resolve(), "b": Path(folder_b).resolve()}
        if not watcher_delay > 0:
            raise ValueError(f"watcher_delay must be positive, not {watcher_delay!r}")
        self.watcher_delay = watcher_delay
        self.binary = binary
        self.folder_id = FOLDER_ID
        self._instances: dict[str, _Instance] = {}
        self._homes: list[Path] = []
        #: Seconds __enter__ took: generating, starting (until REST answers), configuring and
        #: connecting.
        self.startup_seconds: dict[str, float] = {}

    # -- life cycle

    def __enter__(self) -> SyncthingPair:
        if self._instances:
            raise RuntimeError("this SyncthingPair is already started")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        binary = self.binary or ensure_syncthing()
        began = time.monotonic()
        self.base.mkdir(parents=True, exist_ok=True)
        for folder in self.folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        ports = _free_ports(4)
        for index, side in enumerate(SIDES):
            home = Path(tempfile.mkdtemp(prefix=f"syncthing-{side}-", dir=self.base))
            self._homes.append(home)
            self._instances[side] = _Instance(
                side, binary, home, gui_port=ports[2 * index], sync_port=ports[2 * index + 1]
            )
        for instance in self._instances.values():
            instance.generate()
        mark = time.monotonic()
        self.startup_seconds["generate"] = mark - began
        for instance in self._instances.values():
            instance.start()
        for instance in self._instances.values():
            instance.wait_ready(STARTUP_S)
        self.startup_seconds["start"] = time.monotonic() - mark
        mark = time.monotonic()
        # b first: when a's configuration then changes, a dials b at once and b already
        # knows a. (b's own first dial, before a knows b, is refused; a retry would wait
        # reconnectionIntervalS, 60 s.)
        self._configure("b", "a")
        self._configure("a", "b")
        self.startup_seconds["configure"] = time.monotonic() - mark
        mark = time.monotonic()
        self._wait_connected(CONNECT_S)
        self.startup_seconds["connect"] = time.monotonic() - mark
        self.startup_seconds["total"] = time.monotonic() - began

    def _configure(self, side: str, peer_side: str) -> None:
        instance = self._instances[side]
        peer = self._instances[peer_side]
        # Options: already in config.xml before the start; set again and checked here.
        instance.request("PATCH", "/rest/config/options", body=OPTIONS)
        options = instance.request("GET", "/rest/config/options")
        wrong = {name: options.get(name) for name in OPTIONS if options.get(name) != OPTIONS[name]}
        if options.get("listenAddresses") != [instance.sync_address]:
            wrong["listenAddresses"] = options.get("listenAddresses")
        if wrong:
            raise SyncthingError(f"syncthing {side}: options not applied: {wrong}")
        instance.request(
            "PUT",
            f"/rest/config/devices/{peer.device_id}",
            body={
                "deviceID": peer.device_id,
                "name": f"bench-{peer_side}",
                "addresses": [peer.sync_address],
                "introducer": False,
                "autoAcceptFolders": False,
                "paused": False,
            },
        )
        instance.request(
            "PUT",
            f"/rest/config/folders/{self.folder_id}",
            body={
                "id": self.folder_id,
                "label": self.folder_id,
                "path": str(self.folders[side]),
                "type": "sendreceive",
                "devices": [{"deviceID": instance.device_id}, {"deviceID": peer.device_id}],
                "fsWatcherEnabled": True,
                # Syncthing 1.19 takes whole seconds only (an int field: 0.5 is refused with
                # HTTP 400); later versions take fractions.
                "fsWatcherDelayS": _whole_if_possible(self.watcher_delay),
                "rescanIntervalS": 3600,
                "paused": False,
            },
        )
        folder = instance.request("GET", f"/rest/config/folders/{self.folder_id}")
        if float(folder.get("fsWatcherDelayS", -1)) != float(self.watcher_delay):
            raise SyncthingError(
                f"syncthing {side}: fsWatcherDelayS is {folder.get('fsWatcherDelayS')!r}, "
                f"not {self.watcher_delay!r}"
            )

    def _wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            missing = []
            for side, peer_side in (("a", "b"), ("b", "a")):
                instance = self._instances[side]
                instance.check_alive()
                connections = instance.request("GET", "/rest/system/connections")
                peer_id = self._instances[peer_side].device_id
                state = connections.get("connections", {}).get(peer_id, {})
                if not state.get("connected"):
                    missing.append(f"{side} -> {peer_side}")
            if not missing:
                return
            if time.monotonic() > deadline:
                logs = "; ".join(f"{s}: {i.log_tail(4)}" for s, i in self._instances.items())
                raise SyncthingError(
                    f"the two Syncthing instances did not connect within {timeout:.0f} s "
                    f"(not connected: {', '.join(missing)}); logs: {logs}"
                )
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Stops both instances and removes their homes; safe to call more than once.

        /rest/system/shutdown first, SHUTDOWN_S to exit; then SIGTERM and TERM_S; then
        SIGKILL. Whatever interrupts the orderly part (a second Ctrl-C), the kill still runs.
        """
        instances = [i for i in self._instances.values() if i.process is not None]
        leftover: list[int] = []
        try:
            for instance in instances:
                instance.pids()  # remember a forked child, if any
            for instance in instances:
                if instance.running():
                    with contextlib.suppress(SyncthingError):
                        instance.request("POST", "/rest/system/shutdown", timeout=2.0)
            _wait_exit(instances, SHUTDOWN_S)
            for instance in instances:
                if instance.leftovers():
                    instance.signal_group(signal.SIGTERM)
            _wait_exit(instances, TERM_S)
        finally:
            for instance in instances:
                if instance.leftovers():
                    instance.signal_group(signal.SIGKILL)
            _wait_exit(instances, KILL_S)
            for instance in instances:
                instance.close_log()
                leftover.extend(instance.leftovers())
            if not leftover:
                for home in self._homes:
                    shutil.rmtree(home, ignore_errors=True)
                self._homes.clear()
            self._instances.clear()
        if leftover:
            raise SyncthingError(f"Syncthing processes {leftover} survived SIGKILL")

    # -- what a benchmark calls

    def rescan(self, side: str = "a", sub: str | None = None, *, timeout: float = SCAN_S) -> None:
        """Scans the folder (or only ``sub``, a path relative to it) on ``side`` now.

        POST /rest/db/scan, which returns once the scan is done, so this blocks until then
        (at most ``timeout`` seconds).
        """
        query = {"folder": self.folder_id}
        if sub is not None:
            query["sub"] = sub
        self._instance(side).request("POST", "/rest/db/scan", query=query, timeout=timeout)

    def wait_in_sync(self, timeout: float, *, after_sequence: int | None = None) -> None:
        """Until b has everything a has, as Syncthing sees it.

        Every poll checks: a's /rest/db/completion for b at 100 % with nothing needed; b's
        /rest/db/status with needFiles and needBytes 0 and state idle; a idle too; b's
        global view (files, bytes, deletes) equal to a's, and each side's local files equal
        to its global ones. With ``after_sequence`` (a value of ``sequence("a")`` read
        before the change), a's local sequence must also have moved past it, i.e. a must
        have scanned the change.

        Syncthing knows of a change only once it has scanned it: until the watcher fires
        (``watcher_delay`` after the last write) or rescan() runs, everything looks in sync.
        So call rescan() first or pass ``after_sequence``, and verify the files' hashes on b
        anyway (the watcher may have scanned a file half-written: loop until they match).
        Completion alone is not enough in 1.19: while b's index of the folder is still empty
        (sequence 0, the first sync), a reports b 100 % complete with nothing needed for the
        whole transfer; b's own status is what tells. Raises TimeoutError, with what was
        still missing, after ``timeout`` seconds.
        """
        a, b = self._instance("a"), self._instance("b")
        deadline = time.monotonic() + timeout
        folder = {"folder": self.folder_id}
        while True:
            a.check_alive()
            b.check_alive()
            completion = a.request("GET", "/rest/db/completion", {**folder, "device": b.device_id})
            status_a = a.request("GET", "/rest/db/status", folder)
            status_b = b.request("GET", "/rest/db/status", folder)
            missing = _sync_gaps(completion, status_a, status_b, after_sequence)
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Syncthing: b not in sync with a after {timeout:g} s: " + "; ".join(missing)
                )
            time.sleep(POLL_S)

    def sequence(self, side: str = "a") -> int:
        """The folder's local sequence number on ``side`` (/rest/db/status): it grows with
        every change that side scans or pulls."""
        status = self._instance(side).request("GET", "/rest/db/status", {"folder": self.folder_id})
        return int(status.get("sequence", 0))

    def bytes_sent(self, side: str = "a") -> int:
        """Bytes ``side`` has sent on all its connections since it started
        (/rest/system/connections, total.outBytesTotal)."""
        connections = self._instance(side).request("GET", "/rest/system/connections")
        return int(connections["total"]["outBytesTotal"])

    def bytes_received(self, side: str = "b") -> int:
        """Bytes ``side`` has received since it started (total.inBytesTotal)."""
        connections = self._instance(side).request("GET", "/rest/system/connections")
        return int(connections["total"]["inBytesTotal"])

    def pids(self) -> list[int]:
        """The Syncthing process IDs: one per running instance, a's first (each runs without
        Syncthing's monitor process, see _child_environment). Should a version fork anyway,
        its children are listed too, after their parent."""
        return [pid for instance in self._instances.values() for pid in instance.pids()]

    def device_id(self, side: str) -> str:
        return self._instance(side).device_id

    def log_path(self, side: str) -> Path:
        """Syncthing's output for ``side`` (removed with the home by stop())."""
        return self._instance(side).log_path

    def rest(
        self,
        side: str,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        *,
        timeout: float = HTTP_S,
    ) -> Any:
        """Any other REST call on ``side``: the decoded JSON answer."""
        return self._instance(side).request(method, path, query, body, timeout)

    def _instance(self, side: str) -> _Instance:
        if side not in SIDES:
            raise ValueError(f"side must be 'a' or 'b', not {side!r}")
        try:
            return self._instances[side]
        except KeyError:
            raise SyncthingError("the Syncthing pair is not running") from None


def _whole_if_possible(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _wait_exit(instances: list[_Instance], timeout: float) -> None:
    """Until every process of these instances is gone (the main ones reaped), or timeout."""
    deadline = time.monotonic() + timeout
    for instance in instances:
        if instance.process is None:
            continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            instance.process.wait(max(0.0, deadline - time.monotonic()))
    while any(instance.leftovers() for instance in instances) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a living (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        pass
    else:
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sync_gaps(
    completion: dict[str, Any],
    status_a: dict[str, Any],
    status_b: dict[str, Any],
    after_sequence: int | None,
) -> list[str]:
    """What still keeps b from being in sync with a (nothing: in sync)."""
    gaps = []
    if completion.get("completion") != 100 or completion.get("needBytes", 0) != 0:
        gaps.append(
            f"a sees b {completion.get('completion')} % complete, "
            f"{completion.get('needBytes')} bytes / {completion.get('needItems')} items needed"
        )
    if status_b.get("needFiles") != 0 or status_b.get("needBytes") != 0:
        gaps.append(
            f"b needs {status_b.get('needFiles')} files / {status_b.get('needBytes')} bytes"
        )
    for side, status in (("a", status_a), ("b", status_b)):
        if status.get("state") != "idle":
            gaps.append(f"{side} is {status.get('state')!r}")
        if status.get("errors") or status.get("pullErrors"):
            gaps.append(
                f"{side} reports {status.get('errors')} errors / "
                f"{status.get('pullErrors')} pull errors"
            )
        for kind in ("Files", "Directories", "Symlinks", "Deleted", "Bytes"):
            if status.get(f"local{kind}") != status.get(f"global{kind}"):
                gaps.append(
                    f"{side} local{kind} {status.get(f'local{kind}')} != "
                    f"global{kind} {status.get(f'global{kind}')}"
                )
    for kind in ("Files", "Directories", "Symlinks", "Deleted", "Bytes"):
        if status_a.get(f"global{kind}") != status_b.get(f"global{kind}"):
            gaps.append(
                f"global{kind}: a {status_a.get(f'global{kind}')}, "
                f"b {status_b.get(f'global{kind}')}"
            )
    if after_sequence is not None and int(status_a.get("sequence", 0)) <= after_sequence:
        gaps.append(f"a has not scanned the change yet (sequence {status_a.get('sequence')})")
    return gaps


# --- self-check: python -m bench.syncthing ----------------------------------------------------


def _tree_digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root, by relative path, Syncthing's own files left out."""
    digests = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in (".stfolder", ".stversions") or not path.is_file():
            continue
        if path.name.startswith(".syncthing.") and path.name.endswith(".tmp"):
            continue
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        digests[str(relative)] = digest.hexdigest()
    return digests


def _wait_identical(pair: SyncthingPair, a: Path, b: Path, timeout: float) -> float:
    """Seconds until wait_in_sync returns and b's files hash the same as a's."""
    began = time.monotonic()
    deadline = began + timeout
    expected = _tree_digests(a)
    while True:
        pair.wait_in_sync(max(0.0, deadline - time.monotonic()))
        if _tree_digests(b) == expected:
            return time.monotonic() - began
        if time.monotonic() > deadline:
            raise TimeoutError(f"b's files still differ from a's after {timeout:.0f} s")
        time.sleep(POLL_S)


def _write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        left = size
        while left:
            block = os.urandom(min(left, 8 << 20))
            file.write(block)
            left -= len(block)


def _self_check() -> int:
    binary = ensure_syncthing()
    print(syncthing_version(binary))
    with tempfile.TemporaryDirectory(prefix="bench-syncthing-") as tmp:
        root = Path(tmp)
        folder_a, folder_b = root / "a", root / "b"
        folder_a.mkdir()
        (folder_a / "hello.txt").write_text("hello from a\n")
        _write_random(folder_a / "sub" / "small.bin", 64 * 1024)
        _write_random(folder_a / "big.bin", 50 << 20)
        began = time.monotonic()
        with SyncthingPair(root / "homes", folder_a, folder_b, watcher_delay=1) as pair:
            steps = ", ".join(f"{k} {v:.2f} s" for k, v in pair.startup_seconds.items())
            print(f"started and connected in {time.monotonic() - began:.2f} s ({steps})")
            print(f"pids: {pair.pids()}")
            print(f"listening: {_check_sockets(pair.pids())}")
            seconds = _wait_identical(pair, folder_a, folder_b, 120)
            print(
                f"initial sync of 3 files (50 MiB): {seconds:.2f} s after connecting; "
                f"SHA-256 of all {len(_tree_digests(folder_b))} files identical on b"
            )
            print(f"bytes sent: a {pair.bytes_sent('a'):,}, b {pair.bytes_sent('b'):,}")

            # A change after the start, picked up by the watcher (delay 1 s), no rescan.
            sequence = pair.sequence("a")
            mark = time.monotonic()
            _write_random(folder_a / "later.bin", 1 << 20)
            pair.wait_in_sync(60, after_sequence=sequence)
            _wait_identical(pair, folder_a, folder_b, 60)
            print(f"new 1 MiB file through the watcher: {time.monotonic() - mark:.2f} s")

            # The same with a rescan triggered by hand.
            mark = time.monotonic()
            _write_random(folder_a / "rescanned.bin", 1 << 20)
            pair.rescan("a")
            scanned = time.monotonic() - mark
            _wait_identical(pair, folder_a, folder_b, 60)
            print(
                f"new 1 MiB file with rescan(): {time.monotonic() - mark:.2f} s "
                f"(rescan returned after {scanned:.2f} s)"
            )
            print(f"bytes sent: a {pair.bytes_sent('a'):,}, b {pair.bytes_sent('b'):,}")
            pids = pair.pids()
            mark = time.monotonic()
        alive = [pid for pid in pids if _pid_alive(pid)]
        print(f"stopped in {time.monotonic() - mark:.2f} s; processes left: {alive or 'none'}")
        return 1 if alive else 0


def _check_sockets(pids: list[int]) -> str:
    """The sockets these processes listen on (``ss -tulpn``); SyncthingError if any is not on
    127.0.0.1 or is UDP (local discovery would be UDP 21027)."""
    if shutil.which("ss") is None:
        return "not checked (no ss)"
    done = subprocess.run(
        ["ss", "-H", "-tulpn"], capture_output=True, text=True, timeout=10, check=False
    )
    ours = [
        line.split()
        for line in done.stdout.splitlines()
        if any(f"pid={pid}," in line for pid in pids)
    ]
    wrong = [f"{f[0]} {f[4]}" for f in ours if f[0] != "tcp" or not f[4].startswith(LOOPBACK)]
    if wrong or not ours:
        raise SyncthingError(f"Syncthing listens where it must not: {wrong or 'nowhere?'}")
    return ", ".join(f"{f[0]} {f[4]}" for f in ours) + " (loopback TCP only, no UDP)"


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the pair's clean-up still runs (as in bench/__main__)."""
    raise KeyboardInterrupt


def _main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return _self_check()
    except Skipped as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: Syncthing stopped, temporary files removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(_main())
