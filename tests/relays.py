"""A real community relay process for end-to-end tests: ``commonsync relay serve`` with its
own ``--home`` on 127.0.0.1, or the same relay with a tap (``tests/relay_tap.py``)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.daemons import ENV, command, run_commonsync, wait_for

__all__ = ["RelayProcess"]


class RelayProcess:
    """One relay: a home (its key and relay.toml), a process when started, and its log."""

    def __init__(self, base: Path) -> None:
        self.home = base / "home-relay"
        self.log = base / "relay.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.relay_id = ""

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_commonsync(self.home, ["relay", *args], on="the relay", check=check)

    def init(self, *members: str) -> str:
        self.relay_id = self.run("id").stdout.strip()
        if members:
            self.run("allow", *members)
        return self.relay_id

    @property
    def address(self) -> str:
        """What devices give to ``commonsync relay add``."""
        return f"{self.relay_id}@127.0.0.1:{self.port}"

    def start(self, *, tap: Path | None = None) -> None:
        """Start on the port of the previous run (a restart), else on any free one."""
        listen = f"127.0.0.1:{self.port}"
        if tap is None:
            argv = [*command("commonsync"), "--home", str(self.home), "relay", "serve"]
            argv += ["--listen", listen]
        else:
            argv = [sys.executable, "-m", "tests.relay_tap", "--home", str(self.home)]
            argv += ["--listen", listen, "--tap", str(tap)]
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, env=ENV)
        wait_for(lambda: self._listening(offset), "the relay to listen")

    def _listening(self, offset: int) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the relay exited:\n{self.log.read_text()}")
        text = self.log.read_bytes()[offset:].decode(errors="replace")
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
        if found:
            self.port = int(found.group(1))
        return found is not None

    def stop(self) -> int:
        """SIGTERM, and the relay's exit code (it must stop promptly)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
