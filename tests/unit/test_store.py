"""The in-memory store: variants by key within a byte budget, least recently used out first."""

from __future__ import annotations

from kalkan.edge.store import Entry, Store


def page(name: str) -> Entry:
    return Entry(f"GET http://news.example/{name}", 200, [(b"Content-Type", b"text/html")],
                 b"x" * 1000, response_time=100.0, initial_age=0.0, lifetime=60.0)


def test_eviction_spares_a_page_read_since_it_was_stored() -> None:
    size = page("a").size
    store = Store(budget=3 * size + size // 2)
    for name in ("a", "b", "c"):
        store.put(page(name))
    assert store.get(page("a").key) is not None  # read: no longer the one to go first
    store.put(page("d"))  # over budget: one must go
    assert store.get(page("b").key) is None
    assert all(store.get(page(n).key) is not None for n in ("a", "c", "d"))
    assert store.bytes <= store.budget and store.objects == 3
    store.put(page("e"))  # every page read since: one goes, never the one just stored
    assert store.get(page("e").key) is not None
    assert sum(store.get(page(n).key) is None for n in ("a", "c", "d")) == 1
    assert store.bytes <= store.budget and store.objects == 3


def test_a_removed_page_leaves_no_mark_behind() -> None:
    size = page("a").size
    store = Store(budget=2 * size)
    store.put(page("a"))
    assert store.get(page("a").key) is not None
    assert store.remove(page("a").key) == 1
    store.put(page("a"))  # stored again, then b, then c: a is the one to go
    store.put(page("b"))
    store.put(page("c"))
    assert store.get(page("a").key) is None
    assert store.get(page("b").key) is not None and store.get(page("c").key) is not None
    assert store.remove(page("b").key) == 1
    store.put(page("b"))  # stored again, not read since (c was): b goes for d
    store.put(page("d"))
    assert store.get(page("b").key) is None and store.get(page("c").key) is not None
