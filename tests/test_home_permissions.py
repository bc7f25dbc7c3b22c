"""What a device keeps in its home is private, whatever the umask and the home directory
(issue 12, item 10): the configuration and the index are created owner-only, and a folder
key file is checked when loaded exactly as the device key is."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from commonsyncd.config import Config
from commonsyncd.home import Home, HomeError
from commonsyncd.relay.config import RelayServerConfig

from commonsync import FolderKey
from commonsync.errors import InsecureKeyFileError
from tests.daemons import Device


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The usual umask: a file is 0644 unless its creator asks for less."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.usefixtures("usual_umask")
def test_config_files_are_written_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)  # an existing home, made by someone else's rules
    Config(name="x").save(home / "config.toml")
    RelayServerConfig().save(home / "relay.toml")
    assert mode(home / "config.toml") == 0o600
    assert mode(home / "relay.toml") == 0o600
    # A rewrite over a file someone opened up stays private too.
    (home / "config.toml").chmod(0o644)
    Config(name="y").save(home / "config.toml")
    assert mode(home / "config.toml") == 0o600


@pytest.fixture
def keyed(tmp_path: Path) -> tuple[Home, FolderKey]:
    home = Home.at(tmp_path / "home")
    key = FolderKey.generate()
    home.save_folder_key(key)
    return home, key


@pytest.mark.parametrize("bits", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_a_folder_key_open_to_others_is_refused(keyed: tuple[Home, FolderKey], bits: int) -> None:
    home, key = keyed
    path = home.folder_key_file(key.folder_id)
    path.chmod(bits)
    with pytest.raises(InsecureKeyFileError, match="chmod 600"):
        home.load_folder_key(key.folder_id)


@pytest.mark.parametrize("bits", [0o600, 0o400])
def test_a_private_folder_key_loads(keyed: tuple[Home, FolderKey], bits: int) -> None:
    home, key = keyed
    home.folder_key_file(key.folder_id).chmod(bits)
    assert home.load_folder_key(key.folder_id) == key


def test_a_folder_key_behind_a_symlink_is_not_followed(keyed: tuple[Home, FolderKey]) -> None:
    home, key = keyed
    path = home.folder_key_file(key.folder_id)
    real = path.with_name("elsewhere.key")
    path.rename(real)
    path.symlink_to(real)
    with pytest.raises(OSError, match="symbolic links"):
        home.load_folder_key(key.folder_id)


def test_a_folder_key_that_is_a_fifo_does_not_block(keyed: tuple[Home, FolderKey]) -> None:
    home, key = keyed
    path = home.folder_key_file(key.folder_id)
    path.unlink()
    os.mkfifo(path, 0o600)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            home.load_folder_key(key.folder_id)
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    if not outcome:  # release the reader stuck in open() (before the fix)
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert outcome, "loading the folder key blocked on a FIFO"
    assert isinstance(outcome[0], HomeError)
    assert "not a regular file" in str(outcome[0])


@pytest.mark.slow
@pytest.mark.usefixtures("usual_umask")
def test_a_device_set_up_in_an_existing_home_keeps_its_state_private(tmp_path: Path) -> None:
    device = Device(tmp_path, "private")
    device.home.mkdir(mode=0o755)
    device.init("--listen", "127.0.0.1:0", "--no-discovery")
    device.start()
    try:
        device.folder.mkdir()
        device.run("folder", "add", str(device.folder), "--label", "f")  # writes the index
        state = [p for p in device.home.iterdir() if p.name.startswith("state.db")]
        assert {p.name for p in state} >= {"state.db", "state.db-wal"}
        private = [device.home / "config.toml", *state]
        private += list((device.home / "folder-keys").iterdir())
        assert {p.name: mode(p) for p in private} == {p.name: 0o600 for p in private}
    finally:
        assert device.stop() == 0
