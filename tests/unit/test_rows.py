"""The client table's arithmetic (defense/rows.py): the C module gives exactly what the Python
reference gives, on the same arrays, and refuses calls that would reach outside them."""

from __future__ import annotations

import random
from array import array

import pytest

from kalkan.defense import clients, rows
from kalkan.defense.rows import (
    KIND_ASSET,
    KIND_COSTLY,
    KIND_PAGE,
    WIDTH,
    py_meter,
    py_observe_row,
    py_probe,
)

native = pytest.mark.skipif(not rows.NATIVE, reason="built without the C module")


def test_a_compiled_build_has_the_c_module() -> None:
    # `make venv` compiles it with the mypyc modules; a build that silently fell back would lose
    # the speed unnoticed. (The coverage run installs everything uncompiled: then neither is.)
    compiled = clients.__file__ is not None and clients.__file__.endswith(".so")
    assert rows.NATIVE is compiled
    assert (rows.probe is not py_probe) is compiled


def _index(fps: list[int], size: int) -> tuple[array[int], array[int], array[int]]:
    index, fp_col, last = array("I", bytes(4 * size)), array("q", fps), array("I", [0] * len(fps))
    for slot, fp in enumerate(fps):
        i = fp & (size - 1)
        while index[i]:
            i = (i + 1) & (size - 1)
        index[i] = slot + 1
    return index, fp_col, last


@native
def test_probe_finds_and_misses_as_the_reference_does() -> None:
    rng = random.Random(7)
    fps = [rng.getrandbits(62) or 1 for _ in range(300)]
    size = 1024
    for fp in [*fps, *(rng.getrandbits(62) or 1 for _ in range(300))]:
        a, b = _index(fps, size), _index(fps, size)
        got = rows.probe(*a, size - 1, fp, 1234)
        assert got == py_probe(*b, size - 1, fp, 1234)
        assert a == b   # the same `last` written
    # Colliding fingerprints (same home cell) are told apart by the whole value.
    same_home = [(k << 20) | 5 for k in range(1, 6)]
    index, fp_col, last = _index(same_home, 64)
    assert rows.probe(index, fp_col, last, 63, same_home[3], 9) == 3
    assert last[3] == 9
    assert rows.probe(index, fp_col, last, 63, (77 << 20) | 5, 9) == -(5 + 5 + 1)


@native
def test_meters_advance_as_the_reference_does() -> None:
    rng = random.Random(3)
    spec = array("d", [0, 0.5, 10.5, 10.0, 2, 0.1, 1.1, 1.0])   # two meters of a 3-wide row
    a, b = array("d", bytes(8 * 3 * 4)), array("d", bytes(8 * 3 * 4))
    now = 100.0
    for _ in range(2000):
        now += rng.choice([0.0, 0.001, 0.05, 0.3, 2.0])
        slot, n = rng.randrange(4), rng.choice([1, 1, 1, 3])
        assert rows.meter(a, slot * 3, spec, now, n) == py_meter(b, slot * 3, spec, now, n)
        assert a == b


@native
def test_behaviour_rows_change_as_the_reference_does() -> None:
    rng = random.Random(11)
    a, b = array("d", bytes(8 * WIDTH * 3)), array("d", bytes(8 * WIDTH * 3))
    before_a, before_b = array("d", bytes(8 * WIDTH)), array("d", bytes(8 * WIDTH))
    now = 1000.0
    for step in range(5000):
        # Long pauses too, so the forward decay's rescaling (weights past 2^5) is crossed.
        now += rng.choice([0.0, 0.01, 0.2, 1.0, 5.0, 400.0])
        slot = rng.randrange(3)
        kind = rng.choice([KIND_PAGE, KIND_ASSET, 0]) | rng.choice([0, 0, KIND_COSTLY])
        args = (slot, now, 0.0115, kind, rng.random() < 0.5, rng.choice([-1, rng.randrange(26)]),
                rng.choice([-1, rng.randrange(26)]), float(rng.choice([300, 301, 302])),
                rng.choice([1, 1, 2]))
        with_before = step % 2 == 0
        said = rows.observe_row(a, *args, before_a if with_before else None)
        assert said == py_observe_row(b, *args, before_b if with_before else None)
        assert a == b and before_a == before_b


@native
def test_wrong_arrays_and_indexes_are_refused_not_reached() -> None:
    index, fps, last = _index([5, 9], 8)
    with pytest.raises(TypeError, match="index must be an array\\('I'\\)"):
        rows.probe(array("q", [0] * 8), fps, last, 7, 5, 0)
    with pytest.raises(IndexError, match="mask"):
        rows.probe(index, fps, last, 15, 5, 0)   # a mask past the index
    with pytest.raises(IndexError, match="slot"):
        rows.probe(index, array("q", [5]), last, 7, 9, 0)   # the index names a missing slot
    with pytest.raises(OverflowError):
        rows.probe(index, fps, last, 7, 5, -1)   # a time array('I') cannot hold
    row = array("d", bytes(8 * 4))
    with pytest.raises(IndexError, match="meter"):
        rows.meter(row, 3, array("d", [2, 1.0, 2.0, 1.0]), 1.0, 1)
    with pytest.raises(TypeError, match="spec"):
        rows.meter(row, 0, array("f", [0, 1.0, 2.0, 1.0]), 1.0, 1)
    traits = array("d", bytes(8 * WIDTH))
    with pytest.raises(IndexError, match="slot"):
        rows.observe_row(traits, 1, 1.0, 0.01, KIND_PAGE, False, -1, -1, 3.0, 1, None)
    with pytest.raises(IndexError, match="bucket"):
        rows.observe_row(traits, 0, 1.0, 0.01, KIND_PAGE, False, 26, -1, 3.0, 1, None)
    assert traits == array("d", bytes(8 * WIDTH))   # nothing was written by a refused call
