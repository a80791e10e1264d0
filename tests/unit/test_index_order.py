"""Indexing commits in walk order: ids do not depend on which decode thread finished first."""

from __future__ import annotations

from dataclasses import dataclass

from cbir.indexing import _in_key_order


@dataclass
class R:
    key: int


def keys(order: list[int], window: int = 2048) -> list[int]:
    return [r.key for r in _in_key_order((R(k) for k in order), window=window)]


def test_results_come_out_in_key_order():
    assert keys([2, 0, 1, 5, 3, 4]) == [0, 1, 2, 3, 4, 5]
    assert keys([]) == []


def test_a_slow_item_holds_back_at_most_the_window_then_everything_flows():
    # key 0 arrives last: with a window of 3, keys 1.. are released once 4 are held
    out = keys([1, 2, 3, 4, 5, 6, 0], window=3)
    assert sorted(out) == list(range(7)) and len(out) == 7
    assert out.index(0) == 6 and out[:5] == [1, 2, 3, 4, 5]  # nothing waits for 0 forever
    assert keys([3, 1, 2, 0], window=1) == [1, 2, 3, 0]
