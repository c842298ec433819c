"""KV blocks held by a decoding batch that grows in lockstep, counted without visiting members.

Every decoding request gains one token per step, so a member holding `n` tokens at step `s`
holds `a + S` tokens at step S, with `a = n - s` fixed. Its blocks are ceil((a + S) / bs).
Summed over members:

    sum ceil((a + S) / bs) = (sum a + B (S + bs - 1) - sum ((a + S + bs - 1) mod bs)) / bs

and the last sum depends only on how many members have each residue a mod bs, so a histogram
of residues gives the batch's blocks at any step in O(block_size) (a slice sum).
"""

from __future__ import annotations


class LockstepBlocks:
    """Blocks and tokens of a lockstep-growing batch at any step."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.count = 0
        self._sum_a = 0
        self._sum_residues = 0
        self._residues = [0] * block_size

    def add(self, tokens: int, step: int) -> int:
        """A member holding `tokens` at `step` joins; returns its key for `remove`."""
        a = tokens - step
        r = a % self.block_size
        self.count += 1
        self._sum_a += a
        self._sum_residues += r
        self._residues[r] += 1
        return a

    def remove(self, key: int) -> None:
        """A member leaves (its key from `add`)."""
        r = key % self.block_size
        self.count -= 1
        self._sum_a -= key
        self._sum_residues -= r
        self._residues[r] -= 1

    def tokens_at(self, step: int) -> int:
        """Tokens the members hold at `step`."""
        return self._sum_a + self.count * step

    def blocks_at(self, step: int) -> int:
        """Blocks the members hold at `step` (each member's tokens rounded up to whole blocks)."""
        bs = self.block_size
        c = (step + bs - 1) % bs
        # sum over members of (r + c) mod bs = sum r + B c - bs * #{r >= bs - c}
        wrapped = sum(self._residues[bs - c :]) if c else 0
        mod_sum = self._sum_residues + self.count * c - bs * wrapped
        return (self._sum_a + self.count * (step + bs - 1) - mod_sum) // bs
