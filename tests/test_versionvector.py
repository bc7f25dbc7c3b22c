"""Version vectors form a partial order with merge as least upper bound (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commonsync.errors import EncodingError
from commonsync.formats import encoding
from commonsync.formats.versionvector import Ordering, VersionVector

vectors = st.dictionaries(st.integers(0, 5), st.integers(1, 4), max_size=5).map(
    VersionVector.from_mapping
)
FLIP = {
    Ordering.BEFORE: Ordering.AFTER,
    Ordering.AFTER: Ordering.BEFORE,
    Ordering.EQUAL: Ordering.EQUAL,
    Ordering.CONCURRENT: Ordering.CONCURRENT,
}


def leq(a: VersionVector, b: VersionVector) -> bool:
    return a.compare(b) in (Ordering.BEFORE, Ordering.EQUAL)


@given(vectors)
def test_reflexive(a: VersionVector) -> None:
    assert a.compare(a) is Ordering.EQUAL


@given(vectors, vectors)
def test_antisymmetric(a: VersionVector, b: VersionVector) -> None:
    assert b.compare(a) is FLIP[a.compare(b)]
    if leq(a, b) and leq(b, a):
        assert a == b


@given(vectors, vectors, vectors)
def test_transitive(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    if leq(a, b) and leq(b, c):
        assert leq(a, c)


@given(vectors, vectors, vectors)
def test_merge_is_the_least_upper_bound(
    a: VersionVector, b: VersionVector, c: VersionVector
) -> None:
    m = a.merge(b)
    assert leq(a, m)
    assert leq(b, m)
    assert m == b.merge(a)
    assert a.merge(a) == a
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    if leq(a, c) and leq(b, c):
        assert leq(m, c)


@given(vectors, st.integers(0, 5), st.integers(0, 10))
def test_bump_makes_a_strict_successor(a: VersionVector, device: int, now: int) -> None:
    bumped = a.bump(device, now)
    assert a.compare(bumped) is Ordering.BEFORE
    assert bumped.counter(device) == max(a.counter(device) + 1, now)


@given(vectors, vectors)
def test_independent_bumps_are_concurrent(a: VersionVector, b: VersionVector) -> None:
    base = a.merge(b)
    assert base.bump(1, 0).compare(base.bump(2, 0)) is Ordering.CONCURRENT


@given(vectors)
def test_wire_round_trip(a: VersionVector) -> None:
    assert (
        VersionVector.from_wire(encoding.unpack(encoding.pack(a.to_wire()), max_size=1 << 16)) == a
    )


@pytest.mark.parametrize(
    "wire",
    [
        [[2, 1], [1, 1]],
        [[1, 1], [1, 2]],
        [[1, 0]],
        [[-1, 1]],
        [[1, 2**64]],
        [[1]],
        "x",
        [[1, True]],
        [[0, 1]] * 2000,
    ],
)
def test_malformed_vectors_are_refused(wire: object) -> None:
    with pytest.raises(EncodingError):
        VersionVector.from_wire(wire)
