"""Requests and workers as placement sees them.

Every resident request of a worker gains one token per decode step, so a worker keeps one
step counter (`steps`) instead of touching each request per step: a request's generated
count is `steps - steps_at_admit` once its decode has started. Aggregates used by feasibility
(batch size, context tokens, queued prefill work) are maintained incrementally, so the policy
and the simulator never loop over residents to read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from predictors.latency.profile import WorkerProfile


@dataclass(slots=True)
class Request:
    """One request: its lengths (input known, output predicted) and its SLOs.

    `pred_mean` and `pred_upper` (the p90) are the predictor's output lengths at arrival;
    error-aware rebalancing may later raise `est_upper` / `est_mean` for a request that
    outlives its prediction. `output_len` is the true length, known only to the simulator.
    """

    id: str
    arrival_s: float
    input_len: int
    pred_mean: float
    pred_upper: float
    slo_ttft_s: float
    slo_atgt_s: float
    output_len: int | None = None
    est_mean: float = field(init=False)
    est_upper: float = field(init=False)

    def __post_init__(self) -> None:
        if self.input_len < 1:
            raise ValueError("input_len must be >= 1")
        if not 0 < self.pred_mean <= self.pred_upper:
            raise ValueError("need 0 < pred_mean <= pred_upper")
        self.est_mean = self.pred_mean
        self.est_upper = self.pred_upper

    @property
    def ttft_deadline_s(self) -> float:
        return self.arrival_s + self.slo_ttft_s


@dataclass(slots=True)
class Resident:
    """A request placed on a worker. `decode_from_step` is None until its prefill ran."""

    request: Request
    decode_from_step: int | None = None


@dataclass(slots=True)
class WorkerState:
    """A worker's configuration and load. Mutated only through its methods."""

    id: str
    profile: WorkerProfile
    accepting: bool = True  # False while draining for scale-down
    steps: int = 0  # decode steps this worker has run
    residents: dict[str, Resident] = field(default_factory=dict)
    # prefill work placed but not yet run: sum(l), sum(l^2), count
    queued_prefill_tokens: int = 0
    queued_prefill_sq: int = 0
    queued_prefill_count: int = 0
    # decoding requests: count and sum of (input_len - decode_from_step); context tokens of
    # the batch = decode_context_base + decode_count * steps
    decode_count: int = 0
    decode_context_base: int = 0

    @property
    def kv_capacity_tokens(self) -> int:
        return self.profile.kv.capacity_tokens

    @property
    def batch_size(self) -> int:
        return self.decode_count

    @property
    def context_tokens(self) -> int:
        """Tokens in the KV cache of the decoding batch (prompts plus generated tokens)."""
        return self.decode_context_base + self.decode_count * self.steps

    def generated(self, request_id: str) -> int:
        """Tokens generated so far by a resident request."""
        start = self.residents[request_id].decode_from_step
        return 0 if start is None else self.steps - start

    def admit(self, request: Request) -> None:
        """Place a request here; its prefill is queued."""
        if request.id in self.residents:
            raise ValueError(f"request {request.id} is already on worker {self.id}")
        self.residents[request.id] = Resident(request)
        self.queued_prefill_tokens += request.input_len
        self.queued_prefill_sq += request.input_len * request.input_len
        self.queued_prefill_count += 1

    def start_decode(self, request_id: str) -> None:
        """Its prefill ran (and produced the first token): it joins the decoding batch."""
        resident = self.residents[request_id]
        if resident.decode_from_step is not None:
            raise ValueError(f"request {request_id} is already decoding")
        n = resident.request.input_len
        self.queued_prefill_tokens -= n
        self.queued_prefill_sq -= n * n
        self.queued_prefill_count -= 1
        resident.decode_from_step = self.steps
        self.decode_count += 1
        self.decode_context_base += n - self.steps

    def advance(self, steps: int) -> None:
        """Every decoding request gained `steps` tokens."""
        if steps < 0:
            raise ValueError("steps must be >= 0")
        self.steps += steps

    def remove(self, request_id: str) -> Request:
        """The request finished (or was cancelled): free its slot."""
        resident = self.residents.pop(request_id)
        n = resident.request.input_len
        if resident.decode_from_step is None:
            self.queued_prefill_tokens -= n
            self.queued_prefill_sq -= n * n
            self.queued_prefill_count -= 1
        else:
            self.decode_count -= 1
            self.decode_context_base -= n - resident.decode_from_step
        return resident.request
