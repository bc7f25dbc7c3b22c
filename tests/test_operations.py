"""Operations: what running commonsync day to day needs, checked as a person meets it (the
real commands, as subprocesses, where it matters): ``--version``, the log's formats and
``commonsync logs``, a closed pipe, errors as JSON, the systemd units, shell completion,
``init --name`` again, help for every command, counts in words, the licence text."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from commonsyncd import demo
from commonsyncd.cli import build_parser
from commonsyncd.completion import SHELLS, commands, walk
from commonsyncd.logs import describe, journal_command, systemd_unit
from commonsyncd.ops_cli import _journal, follow, last_lines
from commonsyncd.output import plural
from commonsyncd.service import shipped_unit
from rich.console import Console

from .daemons import ENV, LOOPBACK, ROOT, command, wait_for

#: Bound on each command run here.
STEP = 60.0


def run(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``commonsync ARGS`` (with ``--home HOME``), as a person runs it."""
    prefix = ["--home", str(home)] if home is not None else []
    return subprocess.run(
        [*command("commonsync"), *prefix, *args],
        capture_output=True,
        text=True,
        timeout=STEP,
        env=ENV,
        check=False,
    )


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A device with its daemon running, logging to a file with ``--log-file``: its home and
    that file."""
    base = tmp_path_factory.mktemp("ops")
    home, log = base / "home", base / "logs" / "daemon.log"
    log.parent.mkdir()
    assert run("init", "--name", "first", *LOOPBACK, home=home).returncode == 0
    process = subprocess.Popen(
        [*command("commonsyncd"), "--home", str(home), "--log-file", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        wait_for(lambda: run("status", home=home).returncode == 0, "the daemon to answer")
        yield home, log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        assert process.stderr is not None
        assert process.stderr.read() == b"", "with --log-file, nothing goes to standard error"
        process.stderr.close()


# -- version ---------------------------------------------------------------------------------


def test_version_comes_from_the_package_metadata() -> None:
    expected = importlib.metadata.version("commonsync")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert expected == pyproject["project"]["version"], "pyproject.toml is the one source"
    assert run("--version").stdout.strip() == f"commonsync {expected}"
    done = subprocess.run(
        [*command("commonsyncd"), "--version"],
        capture_output=True,
        text=True,
        timeout=STEP,
        env=ENV,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"commonsyncd {expected}")


# -- logs ------------------------------------------------------------------------------------


def _log_once(options: str, *, stderr: int | None = None) -> None:
    """A Python that sets the log up with ``options`` (Python source) and logs one warning."""
    code = (
        "import logging; from pathlib import Path; "
        "from commonsyncd.logs import LogOptions, setup_logging; "
        f"setup_logging('info', LogOptions({options})); "
        "logging.getLogger('commonsync.test').warning('a name \\x1b[2J with an escape')"
    )
    subprocess.run([sys.executable, "-c", code], stderr=stderr, env=ENV, timeout=STEP, check=True)


def test_the_log_is_text_on_a_terminal_and_json_elsewhere(tmp_path: Path) -> None:
    # In a file or a pipe: one JSON object per line.
    with open(tmp_path / "piped", "wb") as sink:
        _log_once("", stderr=sink.fileno())
    entry = json.loads((tmp_path / "piped").read_text())
    assert entry["level"] == "warning"
    assert entry["message"] == "a name \x1b[2J with an escape"
    # On a terminal: a line a person reads, with the escape made visible.
    controller, terminal = pty.openpty()
    try:
        _log_once("", stderr=terminal)
        os.close(terminal)
        terminal = -1
        seen = b""
        while b"\n" not in seen:
            seen += os.read(controller, 4096)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    line = seen.decode().strip()
    assert " warning commonsync.test: a name \\x1b[2J with an escape" in line, line
    assert not line.startswith("{")
    # --log-format forces either; --log-file appends to a private file.
    _log_once(f"'text', Path({str(tmp_path / 'text.log')!r})")
    _log_once(f"'text', Path({str(tmp_path / 'text.log')!r})")
    lines = (tmp_path / "text.log").read_text().splitlines()
    assert len(lines) == 2
    assert all(" warning commonsync.test: " in x for x in lines)
    assert (tmp_path / "text.log").stat().st_mode & 0o077 == 0


def test_a_log_file_that_cannot_be_written_is_one_sentence(tmp_path: Path) -> None:
    done = subprocess.run(
        [*command("commonsyncd"), "--home", str(tmp_path), "--log-file", str(tmp_path / "no/x")],
        capture_output=True,
        text=True,
        timeout=STEP,
        env=ENV,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("commonsyncd: cannot write the log file"), done.stderr
    assert "Traceback" not in done.stderr


def test_status_says_where_the_log_is_and_logs_prints_it(daemon: tuple[Path, Path]) -> None:
    home, log = daemon
    status = run("status", home=home)
    assert f"log: {log}" in status.stdout.splitlines(), status.stdout
    assert json.loads(run("status", "--json", home=home).stdout)["log"] == {
        "kind": "file",
        "path": str(log),
    }
    wait_for(lambda: log.stat().st_size > 0, "the daemon to log")
    written = log.read_text().splitlines()
    shown = run("logs", "-n", "2", home=home)
    assert shown.returncode == 0, shown.stderr
    # In a pipe, the lines as written (JSON); at most the two asked for.
    assert shown.stdout.splitlines() == written[-2:]
    assert all(json.loads(line)["message"] for line in shown.stdout.splitlines())


def test_logs_follows_a_file_through_rotation(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert last_lines(log, 3) == ["line 997", "line 998", "line 999"]
    assert last_lines(log, 0) == []
    assert len(last_lines(log, 5000)) == 1000
    seen: list[str] = []
    done = threading.Event()

    def write() -> None:
        time.sleep(0.2)
        with log.open("a") as f:
            f.write("after 1\nhalf")
        time.sleep(0.2)
        with log.open("a") as f:
            f.write(" a line\n")
        time.sleep(0.2)
        log.rename(tmp_path / "daemon.log.1")  # logrotate moves it, the daemon makes a new one
        log.write_text("rotated\n")

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 20
    for line in follow(
        log, interval=0.02, stop=lambda: done.is_set() or time.monotonic() > deadline
    ):
        seen.append(line)
        if line == "rotated":
            done.set()
    writer.join()
    assert seen == ["after 1", "half a line", "rotated"]


def test_a_daemon_run_by_systemd_has_its_log_read_from_the_journal() -> None:
    user_unit = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/commonsyncd.service\n"
    assert systemd_unit(user_unit) == ("commonsyncd.service", "user")
    assert systemd_unit("0::/system.slice/commonsyncd.service\n") == (
        "commonsyncd.service",
        "system",
    )
    # A terminal's scope under the user manager, cgroup v1 only, no cgroup: no unit.
    assert (
        systemd_unit("0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope") is None
    )
    assert systemd_unit("0::/user.slice/user-1000.slice/user@1000.service\n") is None
    assert systemd_unit("1:name=systemd:/system.slice/commonsyncd.service\n") is None
    where = {"kind": "journal", "path": None, "unit": "commonsyncd.service", "scope": "user"}
    assert journal_command(where, 5, True) == [
        "journalctl",
        "--user",
        "--unit",
        "commonsyncd.service",
        "--output",
        "cat",
        "--no-pager",
        "--lines",
        "5",
        "--follow",
    ]
    assert journal_command({**where, "scope": "system"}, 5, False)[:2] == ["journalctl", "--unit"]
    assert journal_command({"kind": "journal", "path": None}, 5, False) is None
    assert "journalctl --user --unit commonsyncd.service" in describe(where)
    shown: list[str] = []
    assert _journal(["printf", "one\\ntwo\\n"], shown.append) == 0
    assert shown == ["one\n", "two\n"]


def test_logs_without_a_daemon_or_a_file_says_so(tmp_path: Path) -> None:
    assert run("init", *LOOPBACK, home=tmp_path / "h").returncode == 0
    done = run("logs", home=tmp_path / "h")
    assert done.returncode == 3
    assert "the daemon is not running" in done.stderr


# -- a closed pipe, JSON errors --------------------------------------------------------------


def test_status_into_head_exits_quietly(daemon: tuple[Path, Path]) -> None:
    home, _ = daemon
    done = subprocess.run(
        [
            "bash",
            "-c",
            'set -o pipefail; "$@" | head -1',
            "-",
            *command("commonsync"),
            "--home",
            str(home),
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=STEP,
        env=ENV,
        check=False,
    )
    assert done.stdout.startswith("device first ("), done.stdout
    assert done.stderr == ""
    assert done.returncode in (0, 141)  # 141 if head closed the pipe before status was done


def test_output_into_a_closed_pipe_is_no_traceback(daemon: tuple[Path, Path]) -> None:
    home, _ = daemon
    for args in (["status"], ["completion", "bash"], ["logs", "-n", "100"], ["folder", "list"]):
        reader, writer = os.pipe()
        os.close(reader)  # whatever the command writes meets a closed pipe
        try:
            done = subprocess.run(
                [*command("commonsync"), "--home", str(home), *args],
                stdout=writer,
                stderr=subprocess.PIPE,
                text=True,
                timeout=STEP,
                env=ENV,
                check=False,
            )
        finally:
            os.close(writer)
        assert (done.returncode, done.stderr) == (141, ""), args


def test_errors_are_json_with_json(tmp_path: Path) -> None:
    cases = [
        (["folder", "frobnicate"], 2, "invalid choice"),  # the parser's own error
        (["status"], 2, "not set up"),
        (["device", "add", "XYZ"], 2, "not set up"),
    ]
    for args, code, words in cases:
        done = run(*args, "--json", home=tmp_path)
        assert done.returncode == code, done
        assert done.stdout == ""
        error = json.loads(done.stderr)
        assert words in error["error"], error
        assert error["exit_code"] == code
        assert "hint" in error
    assert run("init", *LOOPBACK, home=tmp_path).returncode == 0
    done = run("status", "--json", home=tmp_path)
    error = json.loads(done.stderr)
    assert done.returncode == error["exit_code"] == 3
    assert error["error"].startswith("the daemon is not running")
    # Without --json, the same errors are sentences.
    done = run("folder", "frobnicate", home=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: commonsync folder")


# -- systemd -----------------------------------------------------------------------------------


def test_service_install_writes_the_user_unit(tmp_path: Path) -> None:
    done = run("service", "install", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    unit = (tmp_path / "commonsyncd.service").read_text()
    assert "systemctl --user enable --now commonsyncd" in done.stdout
    exec_start = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    program = exec_start.removeprefix("ExecStart=").split()[0]
    assert Path(program).is_absolute(), exec_start
    assert os.access(program, os.X_OK), exec_start
    assert "commonsyncd" in exec_start
    # Folders outside the home can be written; enough file descriptors for many peers.
    assert "ProtectHome" not in unit
    assert "ProtectSystem=strict" not in unit.split("[Unit]")[1]
    assert "LimitNOFILE=16384" in unit
    assert unit.count("\nExecStart=") == 1
    # Again: nothing to change. Edited by hand: kept, unless --force.
    assert "unchanged" in run("service", "install", "--dir", str(tmp_path)).stdout
    (tmp_path / "commonsyncd.service").write_text(unit + "ReadWritePaths=/srv\n")
    refused = run("service", "install", "--dir", str(tmp_path))
    assert refused.returncode == 2
    assert "--force" in refused.stderr
    assert "ReadWritePaths=/srv" in (tmp_path / "commonsyncd.service").read_text()
    forced = run("service", "install", "--dir", str(tmp_path), "--force", "--json")
    assert json.loads(forced.stdout)["outcome"] == "replaced"
    assert (tmp_path / "commonsyncd.service").read_text() == unit
    # A home with a space reaches ExecStart as one word.
    spaced = tmp_path / "my home"
    done = run("service", "install", "--dir", str(spaced), home=spaced)
    assert f'--home "{spaced}"' in (spaced / "commonsyncd.service").read_text(), done.stderr
    _verify(tmp_path / "commonsyncd.service")


def test_service_install_system_and_relay_units(tmp_path: Path) -> None:
    missing_home = run("service", "install", "--system", "--user", "alice", "--dir", str(tmp_path))
    assert missing_home.returncode == 2
    assert "--home" in missing_home.stderr
    done = run(
        "service", "install", "--system", "--user", "alice", "--dir", str(tmp_path),
        home=Path("/var/lib/commonsync"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    unit = (tmp_path / "commonsyncd.service").read_text()
    assert "\nUser=alice\n" in unit
    assert "--home /var/lib/commonsync" in unit
    assert "systemctl enable --now commonsyncd" in done.stdout
    relay = run("service", "install", "--relay", "--dir", str(tmp_path / "relay"))
    assert relay.returncode == 0, relay.stderr
    text = (tmp_path / "relay" / "commonsync-relay.service").read_text()
    assert "relay serve" in text
    assert "\nUser=commonsync-relay\n" in text


def test_the_units_ship_in_the_package() -> None:
    for kind in ("user", "system", "relay"):
        assert "[Service]" in shipped_unit(kind)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert "systemd/*/*.service" in pyproject["tool"]["setuptools"]["package-data"]["commonsyncd"]


def _verify(unit: Path) -> None:
    """systemd's own check of a unit file, where systemd is installed."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=STEP, check=False
    )
    assert done.returncode == 0, done.stderr


# -- completion ------------------------------------------------------------------------------


def _complete(script: Path, *words: str) -> list[str]:
    """What bash completes for ``words`` (the last one being typed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    probe = (
        f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        '_commonsync; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, timeout=STEP, check=True
    )
    return done.stdout.split()


def test_bash_completion_walks_the_command_tree(tmp_path: Path) -> None:
    script = tmp_path / "commonsync.bash"
    script.write_text(run("completion", "bash").stdout)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=STEP)
    top = _complete(script, "commonsync", "")
    assert {"init", "folder", "status", "logs", "service", "completion"} <= set(top)
    assert _complete(script, "commonsync", "--home", "/x", "folder", "a") == ["add", "accept"]
    assert "--label" in _complete(script, "commonsync", "folder", "add", "--")
    assert _complete(script, "commonsync", "share", "choir", "X", "--role", "") == [
        "reader",
        "writer",
        "admin",
        "owner",
    ]
    assert _complete(script, "commonsync", "completion", "") == SHELLS
    (tmp_path / "photos").mkdir()
    assert _complete(script, "commonsync", "folder", "add", str(tmp_path / "ph")) == [
        str(tmp_path / "photos")
    ]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_parse(shell: str, tmp_path: Path) -> None:
    done = run("completion", shell)
    assert done.returncode == 0
    assert "commonsync" in done.stdout
    if shell == "fish":
        assert "complete -c commonsync" in done.stdout
        assert "-a 'folder'" in done.stdout
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed here: its syntax is not checked")
    script = tmp_path / f"commonsync.{shell}"
    script.write_text(done.stdout)
    subprocess.run([shell, "-n", str(script)], check=True, timeout=STEP)
    if shell == "fish":  # fish completes a command line on request: check what it offers
        probe = f"source {script}; complete -C 'commonsync --home /x folder '"
        offered = subprocess.run(
            ["fish", "-c", probe], capture_output=True, text=True, timeout=STEP, check=True
        ).stdout
        assert {line.split("\t")[0] for line in offered.splitlines()} == set(
            _subcommands(build_parser(), "folder")
        ), offered
        probe = f"source {script}; complete -C 'commonsync member role F M '"
        offered = subprocess.run(
            ["fish", "-c", probe], capture_output=True, text=True, timeout=STEP, check=True
        ).stdout
        assert sorted(line.split("\t")[0] for line in offered.splitlines()) == [
            "admin",
            "owner",
            "reader",
            "writer",
        ]


# -- init --name, help, plurals, licence -----------------------------------------------------


def test_init_again_renames_or_says_why_not(tmp_path: Path, daemon: tuple[Path, Path]) -> None:
    home = tmp_path / "home"
    assert run("init", "--name", "old", *LOOPBACK, home=home).returncode == 0
    done = run("init", "--name", "new", home=home)
    assert done.returncode == 0
    assert "renamed it from 'old' to 'new'" in done.stdout
    assert 'name = "new"' in (home / "config.toml").read_text()
    assert "already set up" in run("init", home=home).stdout
    again = run("init", "--listen", "0.0.0.0:9", "--no-discovery", home=home)
    assert again.returncode == 0
    assert "--listen and --no-discovery changed nothing" in again.stderr
    assert json.loads(run("init", "--json", "--listen", "0.0.0.0:9", home=home).stdout)[
        "unchanged_options"
    ] == ["--listen"]
    running_home, _ = daemon  # its daemon would write its old name back: refused
    refused = run("init", "--name", "other", home=running_home)
    assert refused.returncode == 2
    assert "daemon is running" in refused.stderr
    assert 'name = "first"' in (running_home / "config.toml").read_text()


def test_every_command_and_argument_has_help() -> None:
    def check(parser: argparse.ArgumentParser, words: list[str]) -> Iterator[str]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name):
                        yield f"`{' '.join([*words, name])}` has no help in its parent's list"
                    if not sub.description:
                        yield f"`{' '.join([*words, name])} --help` does not say what it does"
                    yield from check(sub, [*words, name])
            elif not action.help:
                yield f"`{' '.join(words)}` {action.option_strings or action.dest} has no help"

    missing = list(check(build_parser(), ["commonsync"]))
    assert not missing, "\n".join(missing)
    assert all(c.words == [] or c.help for c in walk(commands(build_parser())))


def test_help_shows_no_markup() -> None:
    for program in ("commonsync", "commonsyncd"):
        done = subprocess.run(
            [*command(program), "--help"],
            capture_output=True,
            text=True,
            timeout=STEP,
            env=ENV,
            check=True,
        )
        assert "``" not in done.stdout, done.stdout
        assert ":class:" not in done.stdout


def test_plural() -> None:
    assert plural(1, "file") == "1 file"
    assert plural(0, "file") == "0 files"
    assert plural(2, "member") == "2 members"
    assert plural(3, "copy", "copies") == "3 copies"


def test_the_licence_is_the_agpl_in_full() -> None:
    text = (ROOT / "LICENSE").read_text("utf-8")
    assert text.lstrip().startswith("GNU AFFERO GENERAL PUBLIC LICENSE")
    assert "Version 3, 19 November 2007" in text.splitlines()[1]
    assert "13. Remote Network Interaction; Use with the GNU General Public License." in text
    assert "How to Apply These Terms to Your New Programs" in text
    assert text.rstrip().endswith("<http://www.gnu.org/licenses/>.")
    assert len(text.splitlines()) == 661
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert pyproject["project"]["license"] == "AGPL-3.0-or-later"
    assert pyproject["project"]["license-files"] == ["LICENSE"]


# -- the demo's texts ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_demo_names_no_file_it_removed() -> None:
    done = subprocess.run(
        [*command("commonsync"), "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "now removed" in done.stdout
    assert ".log" not in done.stdout, done.stdout  # its logs went with its temporary directory


def test_a_failed_demo_shows_its_logs_before_removing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(alice: demo.Device, bob: demo.Device, base: Path, console: Console) -> None:
        alice.log.write_text(
            '{"time": "2026-05-12T17:00:00.000Z", "level": "error", "logger": "commonsyncd", '
            '"message": "commonsyncd: the port is taken"}\n'
        )
        raise demo.DemoError("the daemon of alice exited (its log follows)")

    monkeypatch.setattr(demo, "_run", fail)
    console = Console(record=True, width=200)
    assert demo.run_demo(None, console) == 1
    said = console.export_text()
    assert "demo failed: the daemon of alice exited (its log follows)" in said
    assert "error   commonsyncd: commonsyncd: the port is taken" in said
    assert ".log" not in said


def test_dev_without_a_command_describes_each_truly() -> None:
    done = subprocess.run(
        [str(ROOT / "dev")], capture_output=True, text=True, timeout=STEP, check=False
    )
    assert done.returncode == 0
    demo_line = next(line for line in done.stdout.splitlines() if "./dev demo" in line)
    assert "two daemons" in demo_line, demo_line
    unknown = subprocess.run(
        [str(ROOT / "dev"), "nonsense"], capture_output=True, text=True, timeout=STEP, check=False
    )
    assert unknown.returncode == 2
    assert "no command nonsense" in unknown.stderr


def _subcommands(parser: argparse.ArgumentParser, name: str) -> list[str]:
    """The actions of the command ``name`` as the parser has them (the completion offers
    every one, whatever commands are added later)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub = action.choices[name]
            return [
                choice
                for nested in sub._actions
                if isinstance(nested, argparse._SubParsersAction)
                for choice in nested.choices
            ]
    raise AssertionError(f"no command {name}")
