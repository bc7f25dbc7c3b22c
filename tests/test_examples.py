"""The programs in examples/ run as documented and do what they say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from commonsyncd.demo import tree

ROOT = Path(__file__).resolve().parent.parent


def test_sync_two_folders_example(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "deep" / "er").mkdir(parents=True)
    (source / "deep" / "er" / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (source / "ünïcode.txt").write_text("ça marche\n")
    (source / "empty").mkdir()
    target.mkdir()
    (target / "from-target.txt").write_text("this goes the other way\n")

    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sync_two_folders.py"), str(source), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "in sync after" in done.stdout
    assert "bob: applied  deep/er/data.bin" in done.stdout
    assert tree(source) == tree(target)
    assert (source / "from-target.txt").read_text() == "this goes the other way\n"
