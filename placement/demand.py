"""The shortfall the scaler reads: what waits because no worker could take it."""

from __future__ import annotations

from dataclasses import dataclass

from placement.state import Request


@dataclass
class Demand:
    """Totals over the waiting requests, kept incrementally by `WaitingQueue`.

    `kv_tokens` is the KV they would reserve (prompt + upper output estimate each sequence),
    `prefill_tokens` their prompts, `decode_tokens` their predicted mean outputs, both over
    their sequences.
    """

    requests: int = 0
    kv_tokens: int = 0
    prefill_tokens: int = 0
    decode_tokens: float = 0.0

    def add(self, request: Request) -> None:
        self._apply(request, +1)

    def discard(self, request: Request) -> None:
        self._apply(request, -1)

    def _apply(self, request: Request, sign: int) -> None:
        self.requests += sign
        self.kv_tokens += sign * request.upper_final_tokens_all
        self.prefill_tokens += sign * request.prompt_tokens_all
        self.decode_tokens += sign * request.sequences * request.est_mean
