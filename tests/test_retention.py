"""The versions folder's retention (:mod:`commonsync.sync.retention`): a pure function, driven
with a fake clock (a number) and checked on random histories."""

from __future__ import annotations

from pathlib import Path

import pytest
from commonsyncd.config import Config, ConfigError
from hypothesis import given, settings
from hypothesis import strategies as st

from commonsync.sync.retention import (
    DAY,
    HOUR,
    MIN_SHARE_CAP,
    WEEK,
    KeptVersion,
    RetentionPolicy,
    bucket,
    parse_age,
    parse_size,
    plan_pruning,
)

S = 1_000_000_000
NOW = 1_800_000_000 * S  # the fake clock: 2027-01-15
NO_CAP = RetentionPolicy(max_size="none")


def version(path: str, ago_s: float, size: int = 10, n: int = 0) -> KeptVersion:
    time_ns = NOW - int(ago_s * S)
    return KeptVersion(path, f"{path}~{time_ns}-{n}", time_ns, size)


def kept_after(versions: list[KeptVersion], policy: RetentionPolicy, size: int = 0) -> list:
    gone = plan_pruning(versions, NOW, policy, size)
    return [v for v in versions if v.name not in gone]


def test_everything_younger_than_an_hour_stays() -> None:
    versions = [version("a", s) for s in range(0, HOUR, 30)]
    assert plan_pruning(versions, NOW, NO_CAP) == set()


def test_one_per_hour_for_a_day_then_one_per_day() -> None:
    # Every ten minutes for three days.
    versions = [version("a", s) for s in range(0, 3 * DAY, 600)]
    kept = kept_after(versions, NO_CAP)
    young = [v for v in kept if NOW - v.time_ns < HOUR * S]
    hourly = [v for v in kept if HOUR * S <= NOW - v.time_ns < DAY * S]
    daily = [v for v in kept if NOW - v.time_ns >= DAY * S]
    assert len(young) == 6  # all of the last hour
    assert 23 <= len(hourly) <= 24  # one per calendar hour the day spans
    assert 2 <= len(daily) <= 3
    # In each hour, the newest version of that hour is the one kept.
    for v in hourly:
        same_hour = [
            w for w in versions
            if NOW - w.time_ns >= HOUR * S and w.time_ns // (HOUR * S) == v.time_ns // (HOUR * S)
        ]  # fmt: skip
        assert v.time_ns == max(w.time_ns for w in same_hour)


def test_weekly_after_a_month_and_nothing_after_a_year() -> None:
    versions = [version("a", s) for s in range(0, 400 * DAY, DAY)]
    kept = kept_after(versions, NO_CAP)
    ages = sorted((NOW - v.time_ns) / S / DAY for v in kept)
    assert max(ages) <= 365
    old = [a for a in ages if a >= 30]
    assert 47 <= len(old) <= 49  # one a week from day 30 to day 365
    assert len([a for a in ages if a < 30]) == 30


def test_the_fake_clock_moves_versions_through_the_tiers() -> None:
    """The same history pruned again a day later: what was kept hourly is now daily."""
    versions = [version("a", s) for s in range(0, DAY, 300)]
    first = kept_after(versions, NO_CAP)
    assert len(first) > 24
    later = NOW + 2 * DAY * S
    second = [v for v in first if v.name not in plan_pruning(first, later, NO_CAP)]
    assert 1 <= len(second) <= 2  # the day's versions are one or two calendar days


def test_the_newest_version_of_a_path_stays_until_max_age() -> None:
    versions = [version("deleted-long-ago", 200 * DAY), version("too-old", 366 * DAY)]
    assert plan_pruning(versions, NOW, RetentionPolicy()) == {versions[1].name}
    assert plan_pruning(versions, NOW, RetentionPolicy(max_age=0)) == set()


def test_the_cap_removes_the_oldest_first_but_never_the_newest() -> None:
    versions = [version("a", h * HOUR * 0.1, size=40 * 10**6, n=h) for h in range(5)]
    versions.append(version("b", 5 * DAY, size=10**6))
    gone = plan_pruning(versions, NOW, RetentionPolicy(staggered=False, max_size="100 MB"))
    # 201 MB kept: the two oldest versions of "a" go (b's only version stays).
    assert gone == {versions[4].name, versions[3].name, versions[2].name}
    everything = plan_pruning(versions, NOW, RetentionPolicy(staggered=False, max_size="1"))
    assert everything == {v.name for v in versions[1:5]}


def test_the_cap_thins_the_largest_history_first() -> None:
    """A file rewritten over and over (here by a member flushing its history) loses its own
    old versions to the cap before any other file does."""
    mb = 10**6
    original = version("report.pdf", 10 * DAY, size=5 * mb, n=0)
    spam = [version("report.pdf", 60 * i, size=20 * mb, n=i) for i in range(1, 11)]
    letter = [version("letter.txt", 3 * DAY, size=mb, n=20), version("letter.txt", DAY, 1, 21)]
    policy = RetentionPolicy(staggered=False, max_size="100 MB")
    gone = plan_pruning([original, *spam, *letter], NOW, policy)
    assert letter[0].name not in gone  # the other file keeps its history
    assert spam[0].name not in gone  # the newest of the rewritten file stays
    kept = [v for v in [original, *spam, *letter] if v.name not in gone]
    assert sum(v.size for v in kept) <= 100 * mb


def test_a_share_cap_follows_the_folder_size_with_a_floor() -> None:
    policy = RetentionPolicy()
    assert policy.cap(10 * 10**9) == 10**9
    assert policy.cap(10**6) == MIN_SHARE_CAP
    assert RetentionPolicy(max_size="5 GB").cap(1) == 5 * 10**9
    assert RetentionPolicy(max_size="none").cap(10**12) is None


def test_keeping_everything() -> None:
    policy = RetentionPolicy(staggered=False, max_age=0, max_size="none")
    assert policy.keeps_everything
    versions = [version("a", s) for s in range(0, 800 * DAY, 7 * HOUR)]
    assert plan_pruning(versions, NOW, policy) == set()


def test_versions_from_the_future_count_as_new() -> None:
    versions = [version("a", -HOUR, n=1), version("a", -2 * HOUR, n=2)]
    assert plan_pruning(versions, NOW, RetentionPolicy()) == set()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("10%", (0.1, 0)), ("5 GB", (None, 5 * 10**9)), ("512MiB", (None, 512 * 2**20)),
     ("none", None), ("", None), ("123", (None, 123))],
)  # fmt: skip
def test_sizes(text: str, parsed: tuple[float | None, int] | None) -> None:
    assert parse_size(text) == parsed


@pytest.mark.parametrize("text", ["ten", "101%", "-1 GB", "5 XB"])
def test_bad_sizes_say_how_to_write_them(text: str) -> None:
    with pytest.raises(ValueError, match="max_size"):
        RetentionPolicy(max_size=text)


def test_ages() -> None:
    assert parse_age("365d") == 365 * DAY
    assert parse_age("2w") == 2 * WEEK
    assert parse_age(0) == 0
    with pytest.raises(ValueError, match="max_age"):
        parse_age("a year")


# -- properties -------------------------------------------------------------------------------

histories = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c/d"]),
        st.integers(min_value=-HOUR, max_value=500 * DAY),  # seconds ago
        st.integers(min_value=0, max_value=50 * 10**6),  # size
    ),
    max_size=60,
)
policies = st.builds(
    RetentionPolicy,
    staggered=st.booleans(),
    max_age=st.sampled_from([0, 30 * DAY, 365 * DAY]),
    max_size=st.sampled_from(["none", "10%", "150 MB", "0"]),
)


def _versions(history: list[tuple[str, int, int]]) -> list[KeptVersion]:
    return [version(path, ago, size, n) for n, (path, ago, size) in enumerate(history)]


@settings(max_examples=300, deadline=None)
@given(histories, policies, st.integers(min_value=0, max_value=10**10))
def test_properties(
    history: list[tuple[str, int, int]], policy: RetentionPolicy, folder_size: int
) -> None:
    versions = _versions(history)
    gone = plan_pruning(versions, NOW, policy, folder_size)
    assert gone <= {v.name for v in versions}
    kept = [v for v in versions if v.name not in gone]
    by_path: dict[str, list[KeptVersion]] = {}
    for v in versions:
        by_path.setdefault(v.path, []).append(v)
    newest = {max(vs, key=lambda v: (v.time_ns, v.name)).name for vs in by_path.values()}

    # Never the newest version of a path (unless it is older than max_age).
    for v in versions:
        if v.name in newest and not (policy.max_age and (NOW - v.time_ns) / S > policy.max_age):
            assert v.name not in gone
    # Nothing older than max_age stays.
    if policy.max_age:
        assert all((NOW - v.time_ns) / S <= policy.max_age for v in kept)
    # At most one per bucket (per path), staggered.
    if policy.staggered:
        seen = set()
        for v in kept:
            key = bucket(max(0, NOW - v.time_ns) / S, v.time_ns)
            if key is not None:
                assert (v.path, key) not in seen
                seen.add((v.path, key))
    # The cap: respected, or only newest versions are left over it.
    cap = policy.cap(folder_size)
    if cap is not None and sum(v.size for v in kept) > cap:
        assert all(v.name in newest for v in kept)
    # Thinning alone never deletes a version younger than an hour.
    if cap is None:
        assert all(v.name not in gone for v in versions if NOW - v.time_ns < HOUR * S)


@settings(max_examples=100, deadline=None)
@given(histories, policies)
def test_pruning_again_deletes_nothing_more(
    history: list[tuple[str, int, int]], policy: RetentionPolicy
) -> None:
    """The plan is stable: applied once, a second plan at the same time has nothing to do."""
    versions = _versions(history)
    kept = kept_after(versions, policy, 10**9)
    assert plan_pruning(kept, NOW, policy, 10**9) == set()


# -- the daemon's configuration ---------------------------------------------------------------


def test_the_policy_is_read_from_and_written_to_the_daemons_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    folder = "5f" * 32
    path.write_text(
        f'[[folders]]\nid = "{folder}"\nlabel = "a"\npath = "/a"\n\n'
        f'[[folders]]\nid = "{"6e" * 32}"\nlabel = "b"\npath = "/b"\n'
        '[folders.versions]\nkeep = "all"\nmax_age = "30d"\nmax_size = "5 GB"\n'
    )
    config = Config.load(path)
    assert config.folders[0].versions == RetentionPolicy()
    assert config.folders[1].versions == RetentionPolicy(False, 30 * DAY, "5 GB")
    config.save(path)
    text = path.read_text()
    assert text.count("[folders.versions]") == 1  # the default is not written out
    assert Config.load(path).folders == config.folders


@pytest.mark.parametrize(
    ("table", "words"),
    [('keep = "some"', "keep"), ('max_size = "lots"', "max_size"), ("max_age = -1", "max_age"),
     ("every = 1", "no every setting")],
)  # fmt: skip
def test_a_bad_policy_names_its_setting(tmp_path: Path, table: str, words: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[[folders]]\nid = "{"5f" * 32}"\nlabel = "a"\npath = "/a"\n[folders.versions]\n{table}\n'
    )
    with pytest.raises(ConfigError, match=words):
        Config.load(path)
