"""The engine's own names inside a folder, exactly as SPEC.md states them (§8.4, §13)."""

from __future__ import annotations

from commonsync.sync import layout


def test_a_conflict_stamp_is_the_floor_of_the_mtime_in_seconds() -> None:
    """SPEC.md §13: the UTC time of floor(mtime_ns / 10⁹) seconds; a float division rounded
    the last nanoseconds of a second (and the first before 1970) to the next second."""
    last_ns = 1_700_000_000 * 10**9 + 999_999_999  # 2023-11-14 22:13:20.999999999
    assert layout.conflict_name("a/x.txt", last_ns, "ABCDEFG") == (
        "a/x.sync-conflict-20231114-221320-ABCDEFG.txt"
    )
    assert layout.conflict_name("x", -1, "ABCDEFG") == "x.sync-conflict-19691231-235959-ABCDEFG"


def test_an_earlier_conflict_mark_is_replaced_and_only_that() -> None:
    """SPEC.md §13: a mark is ASCII digits; other digits make no mark (Python's ``\\d``
    alone would take any Unicode digit)."""
    ns = 1_700_000_000 * 10**9
    marked = "x.sync-conflict-20200101-000000-ZZZZZZZ.txt"
    assert layout.conflict_name(marked, ns, "ABCDEFG") == (
        "x.sync-conflict-20231114-221320-ABCDEFG.txt"
    )
    arabic = "x.sync-conflict-\u0662\u0660\u0662\u0660\u0660\u0661\u0660\u0661-000000-ZZZZZZZ"
    assert not layout.is_conflict_copy(arabic)
    assert layout.conflict_name(f"{arabic}.txt", ns, "ABCDEFG") == (
        f"{arabic}.sync-conflict-20231114-221320-ABCDEFG.txt"
    )


def test_a_temporary_file_is_internal_whatever_its_name_holds() -> None:
    """A name may hold a newline (SPEC.md §8.4): its temporary file is still the engine's, so
    never scanned, published or written by a peer's record."""
    for name in ("a\nb", "\n", "plain"):
        temp = layout.temp_name(name)
        assert layout.is_temp(temp)
        assert layout.is_internal(f"dir/{temp}")
        assert layout.reaches_internal(f"dir/{temp}")
