"""The rate limiter for what strangers make the daemon and the relay log (pure: a fake clock)."""

from __future__ import annotations

import logging

import pytest
from commonsyncd.terminal import json_visible, visible

from commonsync.node.lograte import OTHERS, LogRate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_few_lines_per_source_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    logger = logging.getLogger("test.lograte")
    rate = LogRate(logger, "connections refused", per_key=3, total=100, window=60, clock=clock)
    caplog.set_level(logging.INFO, logger="test.lograte")
    logged = [rate.log(logging.INFO, "203.0.113.9", "refused %d", i) for i in range(1000)]
    assert logged == [True] * 3 + [False] * 997
    assert rate.log(logging.INFO, "198.51.100.1", "another source")  # its own lines
    assert _messages(caplog) == ["refused 0", "refused 1", "refused 2", "another source"]
    clock.now += 59
    rate.flush()
    assert len(caplog.records) == 4  # the window is not over
    clock.now += 1
    rate.flush()
    assert _messages(caplog)[4:] == [
        "997 more connections refused from 203.0.113.9 in the last 60 s"
    ]
    rate.flush()
    assert len(caplog.records) == 5  # once
    assert rate.log(logging.INFO, "203.0.113.9", "refused again")  # a new window


def test_a_total_bound_and_a_bounded_number_of_sources(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    logger = logging.getLogger("test.lograte.total")
    rate = LogRate(logger, "refusals", per_key=5, total=100, window=60, max_keys=4, clock=clock)
    caplog.set_level(logging.INFO, logger="test.lograte.total")
    for i in range(1000):  # a thousand sources: four have their own lines, the rest share
        rate.log(logging.INFO, f"10.0.{i // 250}.{i % 250}", "refused %d", i)
    assert len(caplog.records) == 4 + 5
    clock.now += 60
    rate.log(logging.INFO, "192.0.2.1", "next window")
    assert _messages(caplog)[9:] == [
        f"991 more refusals from {OTHERS} in the last 60 s",
        "next window",
    ]
    for i in range(1000):  # three sources: five lines each in this window
        rate.log(logging.INFO, f"192.0.2.{i % 3}", "refused %d", i)
    assert len(caplog.records) == 11 + 14  # 5 + 4 (after "next window") + 5
    few = LogRate(logger, "refusals", per_key=5, total=10, window=60, clock=clock)
    for i in range(1000):  # and never more than the total, whatever the sources
        few.log(logging.INFO, f"198.51.100.{i % 20}", "refused %d", i)
    assert len(caplog.records) == 25 + 10


def test_lines_below_the_level_cost_nothing(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.lograte.quiet")
    logger.setLevel(logging.WARNING)
    rate = LogRate(logger, "refusals", clock=Clock())
    assert not rate.log(logging.INFO, "a", "hidden")
    assert rate.log(logging.WARNING, "a", "shown")


def test_terminal_escapes() -> None:
    assert (
        visible("a\x1b[2Jb\x07\n\t\x9b\u202e\ud800é")
        == "a\\x1b[2Jb\\x07\\x0a\\x09\\x9b\\u202e\\ud800é"
    )
    assert visible("line one\nline two\x1b", keep_lines=True) == "line one\nline two\\x1b"
    assert json_visible('{"a": "x\x9by\u202e"}') == '{"a": "x\\u009by\\u202e"}'
