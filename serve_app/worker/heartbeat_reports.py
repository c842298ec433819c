"""What a worker tells the placement actor in its heartbeats, and what it has already told it.

A report is full (every running request) every `FULL_REPORT_EVERY` heartbeats, after a failed
heartbeat (the actor may be a new one that knows nothing) and when the actor asks for one;
otherwise it is a delta against the last report the actor acknowledged: in full only the
requests it has not seen as they are now (new, or with a first token since), and the token
counts that moved as (id, count) pairs. The actor's cost per report is then O(changes), and a
long prompt's prefix hashes cross the wire once (`placement.live.WorkerReport`). Pure state: the
worker replica (serve_app.worker.worker) calls it from its request streams and heartbeat loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from placement.latency_correction import EngineWork
from placement.live import RunningRequest, WorkerReport

# Finished requests kept for a placement actor that does not answer; beyond this the oldest go
# (the actor drops requests a worker stops reporting in its next full report).
MAX_UNSENT_FINISHED = 10_000
# Every this many heartbeats the report is full: whatever a lost or misapplied delta left wrong
# in the actor's picture of this worker lasts at most this long.
FULL_REPORT_EVERY = 40


class HeartbeatReports:
    """A worker's running and finished requests as placement sees them, and the reports of them."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.running: dict[str, RunningRequest] = {}
        self._finished: list[tuple[str, int]] = []
        # what the actor acknowledged of each running request: the view it got in full (a new
        # one replaces it at the first token) and its token count
        self._acked_view: dict[str, RunningRequest] = {}
        self._acked_tokens: dict[str, int] = {}
        self._since_full = FULL_REPORT_EVERY  # the first report is full

    def started(self, view: RunningRequest) -> None:
        self.running[view.request_id] = view

    def first_token(self, request_id: str, at_s: float) -> RunningRequest:
        """The request's first token came at `at_s`; returns its new view."""
        view = self.running[request_id] = dataclasses.replace(self.running[request_id], first_token_s=at_s)
        return view

    def ended(self, request_id: str, tokens: int) -> None:
        self._acked_view.pop(request_id, None)
        self._acked_tokens.pop(request_id, None)
        if self.running.pop(request_id, None) is not None:
            self._finished.append((request_id, tokens))
            del self._finished[:-MAX_UNSENT_FINISHED]

    def report(
        self, generated: Mapping[str, int], *, work: EngineWork | None = None, kv_capacity_tokens: int | None = None,
        kv_used_tokens: int | None = None, waiting: int = 0,
    ) -> WorkerReport:
        """The next heartbeat, with `generated` the tokens of each running request so far."""
        full = self._since_full >= FULL_REPORT_EVERY
        acked_view, acked_tokens = self._acked_view, self._acked_tokens
        running, progress = [], []
        for rid, view in self.running.items():
            tokens = generated.get(rid, 0)
            if full or acked_view.get(rid) is not view:
                running.append(dataclasses.replace(view, generated=tokens))
            elif acked_tokens.get(rid) != tokens:
                progress.append((rid, tokens))
        return WorkerReport(
            worker_id=self.worker_id, running=tuple(running), finished=tuple(self._finished), full=full,
            progress=tuple(progress), kv_capacity_tokens=kv_capacity_tokens, waiting=waiting,
            kv_used_tokens=kv_used_tokens, work=work,
        )

    def acknowledged(self, report: WorkerReport, full_next: bool = False) -> None:
        """The actor applied `report` (and asks for the next in full, `full_next`): later deltas
        leave out what it now knows."""
        del self._finished[: len(report.finished)]
        self._since_full = FULL_REPORT_EVERY if full_next else (1 if report.full else self._since_full + 1)
        for item in report.running:
            view = self.running.get(item.request_id)
            # the view sent, unless a first token replaced it while the report was on its way
            if view is not None and view.first_token_s == item.first_token_s:
                self._acked_view[item.request_id] = view
                self._acked_tokens[item.request_id] = item.generated
        for rid, tokens in report.progress:
            if rid in self.running:
                self._acked_tokens[rid] = tokens

    def failed(self) -> None:
        """A heartbeat got no answer: the next report is full (it may reach a new actor)."""
        self._since_full = FULL_REPORT_EVERY
