"""Prefix caches as vLLM keeps them: chains of KV blocks named by hashes, shared by the running
requests that hold them, kept after the last holder leaves until the space is needed (LRU).

A `Prefix` is a prompt's leading blocks, each `block_tokens` long and named by a chained hash
(a hash names its block and every block before it, so a match is always a leading run). Only
whole blocks are cached, as in vLLM. Mooncake traces name 512-token blocks (`hash_ids`); the
serving ingress hashes token ids at the engine's block size.

`PrefixCache` is one worker's cache. The simulated engine runs one as the truth (what its
prefills skip and its blocks hold); placement keeps one per worker as its belief (what a
placement there would hit), evicted by the same rule against the KV it expects in use. KV is
counted once per block: `shared_excess_tokens` is what summing every holder's whole prompt
counts twice, and `release` hands a block still held to its next holder (`transfers`) so a
per-request count (placement's) keeps each shared block with exactly one holder.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Prefix:
    """A prompt's cacheable blocks: `hashes` of its leading blocks of `block_tokens` tokens."""

    block_tokens: int
    hashes: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.block_tokens < 1:
            raise ValueError("block_tokens must be >= 1")

    def whole(self, input_len: int) -> Prefix:
        """Only the blocks the prompt fills completely (a partial last block is never cached)."""
        n = min(len(self.hashes), input_len // self.block_tokens)
        return self if n == len(self.hashes) else Prefix(self.block_tokens, self.hashes[:n])

    @property
    def tokens(self) -> int:
        return self.block_tokens * len(self.hashes)


def hit_tokens(matched_blocks: int, block_tokens: int, input_len: int) -> int:
    """Prompt tokens a prefill skips with `matched_blocks` leading blocks cached: at most all
    but the last token, which is always computed (its logits give the first output token)."""
    return max(0, min(matched_blocks * block_tokens, input_len - 1))


class _Block:
    __slots__ = ("holders",)

    def __init__(self) -> None:
        self.holders: dict[str, None] = {}  # request ids, first acquirer first (its owner)


class PrefixDirectory:
    """Which of a cluster's caches hold each prompt's first block, so a placement asks only
    the workers that can have a hit (at 1,000 workers, asking each cache costs ~0.5 ms)."""

    def __init__(self) -> None:
        self._holders: dict[int, set[PrefixCache]] = {}

    def caches(self, first_block: int) -> set[PrefixCache]:
        """The caches holding `first_block` (empty if none)."""
        return self._holders.get(first_block, set())

    def add(self, first_block: int, cache: PrefixCache) -> None:
        """`cache` now holds `first_block` (called by the cache)."""
        self._holders.setdefault(first_block, set()).add(cache)

    def discard(self, first_block: int, cache: PrefixCache) -> None:
        """`cache` evicted `first_block` (called by the cache)."""
        holders = self._holders.get(first_block)
        if holders is not None:
            holders.discard(cache)
            if not holders:
                del self._holders[first_block]


class PrefixCache:
    """One worker's cached blocks (see the module docstring). Sizes are in tokens of
    `block_tokens`-long blocks; one cache holds one block size. `directory`: the cluster's,
    told which first blocks this cache holds."""

    def __init__(self, directory: PrefixDirectory | None = None) -> None:
        self.directory = directory
        self._first: set[int] = set()  # blocks that begin a prompt (what the directory indexes)
        self._blocks: dict[int, _Block] = {}
        self._free: OrderedDict[int, int] = OrderedDict()  # unheld blocks, least recently used first -> tokens
        self._tokens: dict[int, int] = {}  # block hash -> its tokens
        self.free_tokens = 0  # tokens of cached blocks no running request holds (evictable)
        self.shared_excess_tokens = 0  # sum over held blocks of (holders - 1) x tokens
        self.evicted_blocks = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, prefix: Prefix) -> int:
        """How many leading blocks of `prefix` are cached."""
        n = 0
        for h in prefix.hashes:
            if h not in self._blocks:
                break
            n += 1
        return n

    def held_tokens(self, prefix: Prefix, blocks: int | None = None) -> int:
        """Tokens of the first `blocks` (default all) blocks of `prefix` that a running request
        holds now: what a newcomer sharing them adds nothing to the KV in use for."""
        total = 0
        for h in prefix.hashes[:blocks]:
            block = self._blocks.get(h)
            if block is None:
                break
            if block.holders:
                total += self._tokens[h]
        return total

    def acquire(self, request_id: str, prefix: Prefix, blocks: int | None = None) -> None:
        """`request_id` holds the first `blocks` (default all) blocks of `prefix`, cached from
        now on (a block already cached is shared or revived)."""
        size = prefix.block_tokens
        for i, h in enumerate(prefix.hashes[:blocks]):
            block = self._blocks.get(h)
            if block is None:
                block = self._blocks[h] = _Block()
                self._tokens[h] = size
                if i == 0:
                    self._first.add(h)
                    if self.directory is not None:
                        self.directory.add(h, self)
            elif request_id in block.holders:
                continue
            elif block.holders:
                self.shared_excess_tokens += size
            else:
                self.free_tokens -= self._free.pop(h)
            block.holders[request_id] = None

    def release(self, request_id: str, prefix: Prefix) -> dict[str, int]:
        """`request_id` no longer holds `prefix`'s blocks; those no one holds stay cached,
        evicted last-block-first as vLLM frees them. Returns the tokens of blocks it owned
        that others still hold, by their new owner (see the module docstring)."""
        transfers: dict[str, int] = {}
        for h in reversed(prefix.hashes):
            block = self._blocks.get(h)
            if block is None or request_id not in block.holders:
                continue
            owner = next(iter(block.holders))
            del block.holders[request_id]
            size = self._tokens[h]
            if block.holders:
                self.shared_excess_tokens -= size
                if owner == request_id:
                    heir = next(iter(block.holders))
                    transfers[heir] = transfers.get(heir, 0) + size
            else:
                self._free[h] = size
                self.free_tokens += size
        return transfers

    def detach(self) -> None:
        """This cache is dropped (its worker is gone or rebuilt): out of the directory."""
        if self.directory is not None:
            for h in self._first:
                self.directory.discard(h, self)
        self._first.clear()

    def trim(self, limit_tokens: float) -> int:
        """Evict unheld blocks, least recently used first, until at most `limit_tokens` of them
        remain (the space the KV cache has left for them). Returns how many were evicted."""
        evicted = 0
        while self.free_tokens > limit_tokens and self._free:
            h, size = self._free.popitem(last=False)
            del self._blocks[h]
            del self._tokens[h]
            if h in self._first:
                self._first.discard(h)
                if self.directory is not None:
                    self.directory.discard(h, self)
            self.free_tokens -= size
            evicted += 1
        self.evicted_blocks += evicted
        return evicted


def pooled_hits(prompts: Iterable[tuple[Prefix | None, int]], capacity_tokens: float = math.inf) -> list[int]:
    """Prompt tokens each of these prompts (prefix, input length; in arrival order) would take
    from one cache of `capacity_tokens` holding the earlier ones (LRU, as `PrefixCache`). With
    no bound, the most any placement can reuse (the yardstick of a hit rate); with the room a
    cluster's caches have together, about what perfect affinity gets from them."""
    cache = PrefixCache()
    hits = []
    for prefix, input_len in prompts:
        if prefix is None:
            hits.append(0)
            continue
        hits.append(hit_tokens(cache.match(prefix), prefix.block_tokens, input_len))
        cache.acquire("", prefix)
        cache.release("", prefix)
        cache.trim(capacity_tokens)
    return hits


def prefix_of(token_ids: Sequence[int], block_tokens: int, salt: str | None = None) -> Prefix:
    """The prefix blocks of a prompt's token ids at `block_tokens` a block: each whole block
    named by a hash of the one before it and its own tokens (ints and tuples of ints hash the
    same in every process, so the ingress and an engine agree). A `salt` (vLLM's `cache_salt`)
    starts the chain elsewhere, so salted prompts share blocks only with the same salt, as in
    vLLM's cache (a string's `hash` differs between processes: it is digested instead)."""
    hashes = []
    parent = 0 if salt is None else int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "big")
    for start in range(0, len(token_ids) - block_tokens + 1, block_tokens):
        parent = hash((parent, tuple(token_ids[start:start + block_tokens])))
        hashes.append(parent)
    return Prefix(block_tokens, tuple(hashes))
