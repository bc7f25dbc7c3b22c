"""Ignore rules: gitignore semantics through pathspec, internal paths, and malformed files."""

from __future__ import annotations

import contextlib
import os
import threading
import unicodedata
from pathlib import Path

import pytest

from commonsync.errors import IgnoreFileError, InvalidPathError
from commonsync.sync import layout
from commonsync.sync.ignore import (
    IGNORE_FILE,
    LAST_GOOD_FILE,
    MAX_IGNORE_FILE_SIZE,
    FolderRules,
    IgnoreRules,
)


def rules(root: Path, text: str | bytes) -> IgnoreRules:
    data = text.encode() if isinstance(text, str) else text
    (root / IGNORE_FILE).write_bytes(data)
    return IgnoreRules.load(root)


def test_no_ignore_file_ignores_only_internal_paths(tmp_path: Path) -> None:
    ignore = IgnoreRules.load(tmp_path)
    assert ignore.patterns == ()
    assert not ignore.ignores("notes.txt", False)
    assert not ignore.ignores("a/b/c", True)
    assert not ignore.ignores(IGNORE_FILE, False)
    assert ignore.ignores(".commonsync", True)
    assert ignore.ignores(".commonsync/folder", False)
    assert ignore.ignores(layout.VERSIONS_DIR + "/a~20260101-000000.txt", False)
    assert ignore.ignores("docs/" + layout.temp_name("report.pdf"), False)
    assert ignore.ignores(layout.temp_name("x", bytes(32)), False)
    # Only the engine's exact temp pattern: a user's file that merely looks alike is synced.
    assert not ignore.ignores(".x.cs-tmp-not-hex", False)
    assert not ignore.ignores("sub/.commonsync", True)


def test_gitignore_patterns(tmp_path: Path) -> None:
    ignore = rules(
        tmp_path,
        "# build output\n\n*.log\n!keep.log\n/build\ncache/\ndocs/**/*.tmp\n\\#hash\ntrailing   \n",
    )
    assert ignore.ignores("a.log", False)
    assert ignore.ignores("deep/down/b.log", False)
    assert not ignore.ignores("keep.log", False)
    assert not ignore.ignores("sub/keep.log", False)
    # Anchored at the root only.
    assert ignore.ignores("build", True)
    assert ignore.ignores("build", False)
    assert ignore.ignores("build/out.o", False)
    assert not ignore.ignores("src/build", True)
    # Directory-only pattern: a file of that name is kept, a directory is not.
    assert ignore.ignores("cache", True)
    assert ignore.ignores("x/cache", True)
    assert not ignore.ignores("cache", False)
    assert ignore.ignores("cache/blob", False)
    assert ignore.ignores("docs/a/b/c.tmp", False)
    assert ignore.ignores("docs/c.tmp", False)
    assert not ignore.ignores("other/c.tmp", False)
    assert ignore.ignores("#hash", False)
    assert ignore.ignores("trailing", False)
    assert not ignore.ignores("# build output", False)


def test_nothing_is_reincluded_below_an_ignored_directory(tmp_path: Path) -> None:
    ignore = rules(tmp_path, "vendor/\n!vendor/keep.txt\n")
    assert ignore.ignores("vendor/keep.txt", False)
    assert ignore.ignores("vendor/a/b/c", False)
    # ...whereas matches() looks at the path alone, for walkers that skip ignored directories.
    assert not ignore.matches("vendor/keep.txt", False)


def test_internal_paths_cannot_be_reincluded(tmp_path: Path) -> None:
    ignore = rules(tmp_path, "!.commonsync\n!.commonsync/**\n!*\n")
    assert ignore.ignores(".commonsync/folder", False)
    assert ignore.ignores(layout.temp_name("a.txt"), False)


def test_patterns_are_normalised_to_nfc(tmp_path: Path) -> None:
    decomposed = unicodedata.normalize("NFD", "résumé.txt")
    ignore = rules(tmp_path, decomposed + "\n")
    assert ignore.ignores("résumé.txt", False)
    assert ignore.ignores("cv/résumé.txt", False)


def test_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    ignore = rules(tmp_path, b"\xef\xbb\xbf*.bak\r\nsecret\r\n")
    assert ignore.ignores("x.bak", False)
    assert ignore.ignores("secret", False)
    assert ignore.patterns == ("*.bak", "secret")


@pytest.mark.parametrize(
    ("text", "line"),
    [("ok\n!\n", 2), ("a\nb\nc\\\n", 3), ("[z-a]\n", 1)],
)
def test_invalid_pattern_names_its_line(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(IgnoreFileError, match=f"line {line}: .* is not a valid pattern"):
        rules(tmp_path, text)


def test_ignore_file_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(IgnoreFileError, match="line 2: not valid UTF-8"):
        rules(tmp_path, b"*.log\nbad\xff\n")


def test_ignore_file_too_large(tmp_path: Path) -> None:
    with pytest.raises(IgnoreFileError, match="larger than"):
        rules(tmp_path, b"#" * (MAX_IGNORE_FILE_SIZE + 1))


def test_ignore_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / IGNORE_FILE).mkdir()
    with pytest.raises(IgnoreFileError, match="cannot read"):
        IgnoreRules.load(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_ignore_file(tmp_path: Path) -> None:
    (tmp_path / IGNORE_FILE).write_text("*.log\n")
    (tmp_path / IGNORE_FILE).chmod(0)
    with pytest.raises(IgnoreFileError, match="cannot read"):
        IgnoreRules.load(tmp_path)


@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "a//b", "a/", "caf\u0065\u0301"])
def test_invalid_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidPathError):
        IgnoreRules(["*.log"]).ignores(path, False)


def test_rules_from_patterns_directly() -> None:
    ignore = IgnoreRules(["*.o", "!main.o"])
    assert ignore.ignores("x.o", False)
    assert not ignore.ignores("main.o", False)
    assert "*.o" in repr(ignore)


# -- a rule file chosen by a peer (issue 12, item 2) --------------------------------------------


def _load_within(root: Path, seconds: float = 10) -> IgnoreRules | BaseException:
    """``IgnoreRules.load(root)`` in a thread, so that a load that blocks fails the test
    instead of hanging it; returns the rules or the exception raised."""
    outcome: list[IgnoreRules | BaseException] = []

    def load() -> None:
        try:
            outcome.append(IgnoreRules.load(root))
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, "reading .csignore blocked"
    return outcome[0]


def test_ignore_file_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real rules").write_text("*.log\n")
    (tmp_path / IGNORE_FILE).symlink_to(tmp_path / "real rules")
    with pytest.raises(IgnoreFileError, match=r"symlink.*never follows"):
        IgnoreRules.load(tmp_path)


@pytest.mark.skipif(not os.path.exists("/dev/ptmx"), reason="needs /dev/ptmx")
def test_ignore_file_linked_to_a_device_neither_blocks_nor_is_read(tmp_path: Path) -> None:
    (tmp_path / IGNORE_FILE).symlink_to("/dev/ptmx")
    outcome = _load_within(tmp_path)
    assert isinstance(outcome, IgnoreFileError)
    assert "symlink" in str(outcome)


def test_ignore_file_that_is_a_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / IGNORE_FILE
    os.mkfifo(fifo)
    try:
        outcome = _load_within(tmp_path)
    finally:
        # Release a reader stuck in open() (before the fix), so the thread ends.
        with contextlib.suppress(OSError):  # nobody was waiting
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert isinstance(outcome, IgnoreFileError)
    assert "a FIFO, not a regular file" in str(outcome)


def test_folder_rules_keep_the_last_good_rules(tmp_path: Path) -> None:
    layout_dir = tmp_path / ".commonsync"
    layout_dir.mkdir()
    (tmp_path / IGNORE_FILE).write_text("*.secret\n")
    kept = FolderRules(tmp_path)
    good = kept.load()
    assert good.error is None
    assert good.problem == ""
    assert good.rules.ignores("a.secret", False)
    (tmp_path / IGNORE_FILE).write_bytes(b"*.log\n\xff\n")
    broken = kept.load()
    assert isinstance(broken.error, IgnoreFileError)
    assert broken.last_good
    assert broken.rules.ignores("a.secret", False)
    assert not broken.rules.ignores("a.log", False)
    assert "line 2: not valid UTF-8" in broken.problem
    assert "last rules that could be used" in broken.problem
    # A restart (a new FolderRules) with the rule file still broken: the copy kept in the
    # metadata directory is the last good rules.
    assert (tmp_path / LAST_GOOD_FILE).read_bytes() == b"*.secret\n"
    again = FolderRules(tmp_path).load()
    assert again.last_good
    assert again.rules.ignores("a.secret", False)
    # Fixed: the new rules apply, and become the last good ones.
    (tmp_path / IGNORE_FILE).write_text("*.log\n")
    fixed = kept.load()
    assert fixed.error is None
    assert fixed.rules.ignores("a.log", False)
    assert (tmp_path / LAST_GOOD_FILE).read_bytes() == b"*.log\n"


def test_folder_rules_with_no_good_rules_ever_use_none(tmp_path: Path) -> None:
    (tmp_path / ".commonsync").mkdir()
    (tmp_path / IGNORE_FILE).write_text("ok\n!\n")
    broken = FolderRules(tmp_path).load()
    assert isinstance(broken.error, IgnoreFileError)
    assert not broken.last_good
    assert broken.rules.patterns == ()
    assert "line 2" in broken.problem
    assert "no rules apply" in broken.problem
