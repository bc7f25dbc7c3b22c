"""The quick start's first command does what the README says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "daemon")])}


@pytest.mark.slow
def test_demo_processes_a_folder_and_checks_itself(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "letter.txt").write_text("Chère Anne, " * 500)
    (folder / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-m", "commonsyncd.cli", "core-demo", str(folder), "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every file rebuilt from sealed chunks matches the original" in result.stdout
    assert "no file name and no file content appears" in result.stdout
    assert "refused" in result.stdout
    assert (home / "device.key").stat().st_mode & 0o777 == 0o600
    assert (home / "index.db").exists()
    sealed = b"".join(p.read_bytes() for p in (home / "sealed").rglob("*") if p.is_file())
    assert b"letter" not in sealed
    assert "Chère Anne".encode() not in sealed


def test_demo_refuses_a_missing_folder_with_one_sentence(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "commonsyncd.cli", "core-demo", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert result.returncode == 2
    assert "is not a folder" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
