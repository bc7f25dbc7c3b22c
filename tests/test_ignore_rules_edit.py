"""Rules for the whole folder and for this device only (issue 16): how the rule files are
edited, and how this device's rules combine with ``.csignore``."""

from __future__ import annotations

from pathlib import Path

import pytest

from commonsync.errors import IgnoreFileError
from commonsync.sync.ignore import (
    IGNORE_FILE,
    LOCAL_FILE,
    FolderRules,
    IgnoreRules,
    add_rule,
    list_rules,
    remove_rule,
)


def test_rules_are_added_listed_and_removed_in_their_own_file(tmp_path: Path) -> None:
    (tmp_path / IGNORE_FILE).write_text("# build output\nbuild/\n")
    assert add_rule(tmp_path, "*.pdf", this_device=False)
    assert not add_rule(tmp_path, "*.pdf", this_device=False)  # already there
    assert add_rule(tmp_path, "/videos/", this_device=True)
    assert list_rules(tmp_path).folder == ("build/", "*.pdf")
    assert list_rules(tmp_path).this_device == ("/videos/",)
    assert (tmp_path / IGNORE_FILE).read_text() == "# build output\nbuild/\n*.pdf\n"
    assert not remove_rule(tmp_path, "/videos/", this_device=False)  # not a folder rule
    assert remove_rule(tmp_path, "/videos/", this_device=True)
    assert remove_rule(tmp_path, "build/", this_device=False)
    assert (tmp_path / IGNORE_FILE).read_text() == "# build output\n*.pdf\n"
    assert list_rules(tmp_path).this_device == ()
    assert (tmp_path / LOCAL_FILE).exists()


@pytest.mark.parametrize("pattern", ["", "   ", "a\nb", "# a comment"])
def test_what_is_no_pattern_is_refused(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(IgnoreFileError):
        add_rule(tmp_path, pattern, this_device=True)
    assert not (tmp_path / LOCAL_FILE).exists()


def test_a_rule_file_reached_through_a_symlink_is_not_written(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("")
    root = tmp_path / "folder"
    root.mkdir()
    (root / IGNORE_FILE).symlink_to(outside)
    with pytest.raises(IgnoreFileError, match="symlink"):
        add_rule(root, "*.log", this_device=False)
    assert outside.read_text() == ""


def test_this_devices_rules_add_to_the_folders_and_cannot_reinclude(tmp_path: Path) -> None:
    (tmp_path / IGNORE_FILE).write_text("*.log\n")
    add_rule(tmp_path, "videos/", this_device=True)
    add_rule(tmp_path, "!keep.log", this_device=True)
    used = FolderRules(tmp_path).load()
    assert used.problem == ""
    assert used.rules.ignores("videos/a.mp4", False)
    assert used.rules.ignores("keep.log", False)  # the folder's rule still holds
    assert used.rules.ignores("x.log", False)
    assert not used.rules.ignores("notes.txt", False)
    assert used.local.ignores("videos", True)
    assert not used.local.ignores("x.log", False)
    assert IgnoreRules().also(used.local).ignores("videos/b.mp4", False)


def test_a_broken_file_of_this_device_keeps_its_last_rules(tmp_path: Path) -> None:
    rules = FolderRules(tmp_path)
    add_rule(tmp_path, "videos/", this_device=True)
    assert rules.load().local.ignores("videos", True)
    (tmp_path / LOCAL_FILE).write_bytes(b"\xff\xfe bad")
    used = rules.load()
    assert "not valid UTF-8" in used.problem
    assert used.rules.ignores("videos/a.mp4", False)
