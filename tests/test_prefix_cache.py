"""`placement.prefix_cache`: shared blocks counted once, ownership handed on, LRU eviction."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from placement.prefix_cache import Prefix, PrefixCache, PrefixDirectory, hit_tokens, prefix_of

BT = 16


def _prefix(*hashes: int) -> Prefix:
    return Prefix(BT, tuple(hashes))


def test_match_is_a_leading_run_and_whole_drops_a_partial_block():
    cache = PrefixCache()
    cache.acquire("a", _prefix(1, 2, 3))
    assert cache.match(_prefix(1, 2, 9)) == 2 and cache.match(_prefix(9, 2, 3)) == 0
    assert _prefix(1, 2, 3).whole(40) == _prefix(1, 2)
    assert hit_tokens(3, BT, 48) == 47 and hit_tokens(2, BT, 48) == 32 and hit_tokens(0, BT, 1) == 0


def test_a_shared_block_is_counted_once_and_handed_to_the_next_holder():
    cache = PrefixCache()
    cache.acquire("a", _prefix(1, 2))
    assert cache.held_tokens(_prefix(1, 2, 3)) == 2 * BT
    cache.acquire("b", _prefix(1, 2, 3))
    assert cache.shared_excess_tokens == 2 * BT and cache.free_tokens == 0
    assert cache.release("a", _prefix(1, 2)) == {"b": 2 * BT}
    assert cache.shared_excess_tokens == 0
    assert cache.release("b", _prefix(1, 2, 3)) == {}
    assert cache.free_tokens == 3 * BT and cache.held_tokens(_prefix(1, 2, 3)) == 0


def test_unheld_blocks_are_evicted_least_recently_used_first_tail_first():
    cache = PrefixCache()
    cache.acquire("a", _prefix(1, 2))
    cache.acquire("b", _prefix(5, 6))
    cache.release("a", _prefix(1, 2))
    cache.release("b", _prefix(5, 6))
    assert cache.trim(3 * BT) == 1 and cache.match(_prefix(1, 2)) == 1  # a's tail went first
    cache.acquire("c", _prefix(1))  # revived: now the most recently used
    assert cache.free_tokens == 2 * BT
    assert cache.trim(0) == 2 and len(cache) == 1 and cache.match(_prefix(1)) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("acq rel trim".split()), st.integers(0, 5),
                          st.lists(st.integers(0, 6), min_size=1, max_size=4), st.integers(0, 8)), max_size=60))
def test_counts_match_a_recount_and_each_held_block_has_one_owner(ops):
    cache = PrefixCache()
    live: dict[str, Prefix] = {}
    owned: dict[str, int] = {}  # the per-request KV count placement keeps
    for op, who, hashes, limit in ops:
        rid = f"r{who}"
        if op == "acq" and rid not in live:
            # chained hashes: a block's hash names its whole prefix
            prefix = _prefix(*(hash(tuple(hashes[: i + 1])) for i in range(len(hashes))))
            owned[rid] = prefix.tokens - cache.held_tokens(prefix)
            cache.acquire(rid, prefix)
            live[rid] = prefix
        elif op == "rel" and rid in live:
            for heir, tokens in cache.release(rid, live.pop(rid)).items():
                owned[heir] += tokens
            del owned[rid]
        elif op == "trim":
            cache.trim(limit * BT)
            assert cache.free_tokens <= limit * BT
        holders: dict[int, list[str]] = {}
        for r, p in live.items():
            for h in dict.fromkeys(p.hashes):
                holders.setdefault(h, []).append(r)
        distinct = BT * len(holders)
        assert cache.shared_excess_tokens == sum(BT * len(p.hashes) for p in live.values()) - distinct
        assert sum(owned.values()) == distinct
        assert all(cache.match(_prefix(h)) == 1 for h in holders)  # held blocks are never evicted


def test_the_directory_knows_which_caches_hold_a_first_block():
    directory = PrefixDirectory()
    a, b = PrefixCache(directory), PrefixCache(directory)
    a.acquire("x", _prefix(1, 2))
    b.acquire("y", _prefix(1, 3))  # not a chain: 1 begins both prompts
    b.acquire("z", _prefix(7))
    assert directory.caches(1) == {a, b} and directory.caches(2) == set() and directory.caches(7) == {b}
    a.release("x", _prefix(1, 2))
    a.trim(0)
    assert directory.caches(1) == {b}
    b.detach()
    assert directory.caches(1) == set() and directory.caches(7) == set()


def test_prefix_of_names_whole_blocks_by_their_chain_and_a_salt_starts_another_chain() -> None:
    ids = list(range(40))
    plain = prefix_of(ids, 16)
    assert len(plain.hashes) == 2 and prefix_of(ids[:33], 16) == plain
    assert prefix_of([99, *ids[1:]], 16).hashes[1] != plain.hashes[1]  # a block is named by its chain
    salted = prefix_of(ids, 16, "tenant-a")
    assert salted == prefix_of(ids, 16, "tenant-a")  # the same in every process: a digest, not hash(str)
    assert not set(salted.hashes) & set(plain.hashes)
    assert not set(salted.hashes) & set(prefix_of(ids, 16, "tenant-b").hashes)
