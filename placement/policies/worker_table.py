"""Per-worker aggregates as numpy arrays, so a policy can filter and rank 1000 workers at once.

The table watches its workers (`WorkerState.watch`) and recomputes only the rows of workers that
changed (admission, decode start, removal, estimate change). `advance` is not reported, so every
column is either independent of the step counter or a bound that stays valid as steps advance
(noted per column). The prefill load decays with time: it is kept referred to the table's
epoch, so reading it at any time is one scalar decay times a column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from operator import is_

import numpy as np

from placement.state import PREFILL_WINDOW_S, ChangeLog, WorkerState, decay
from predictors.latency.profile import WorkerProfile

# Rebase the epoch once the loads referred to it have grown by e^REBASE_AFTER_WINDOWS, long
# before float64 overflows.
REBASE_AFTER_WINDOWS = 50.0


class WorkerTable:
    """Columns over the workers of the last `sync`, row i = workers[i]."""

    def __init__(self) -> None:
        self.workers: list[WorkerState] = []
        self.profiles: list[WorkerProfile] = []  # distinct profiles; `group` indexes them
        self._rows: dict[int, int] = {}  # id(worker) -> row
        self._log = ChangeLog()
        self.epoch_s = 0.0
        self._resize(0)

    def _resize(self, n: int) -> None:
        self.group = np.zeros(n, dtype=np.int64)
        self.capacity = np.zeros(n)
        # sum of residents' upper final sizes: the projected KV peak's upper bound while no
        # resident is past its upper estimate
        self.kv_final = np.zeros(n)
        # KV in use when the row was refreshed: a lower bound later, as usage only grows with steps
        self.kv_used_floor = np.zeros(n)
        # time to prefill what is queued ahead of a new request
        self.queued_prefill_s = np.zeros(n)
        # decode step of residents + 1 over kv_used_floor: a lower bound of the next step's time
        self.step_floor_s = np.zeros(n)
        # decode step of residents + 1 over kv_final: an upper bound without the newcomer's tokens
        self.step_bound_s = np.zeros(n)
        # how much step_bound_s grows per context token (the step is affine in context tokens),
        # so the bound with a newcomer's final tokens is one multiply-add away
        self.step_bound_per_token_s = np.zeros(n)
        self.min_slo_atgt_s = np.full(n, math.inf)
        # the worker's decayed prefill load (WorkerState.prefill_load_s) as of epoch_s
        self.prefill_load_at_epoch_s = np.zeros(n)

    def prefill_share(self, now_s: float, extra_prefill_s: np.ndarray) -> np.ndarray:
        """`WorkerState.prefill_share(now_s, extra)` of every row (equal up to rounding)."""
        self._rebase_before(now_s)
        return (self.prefill_load_at_epoch_s * decay(now_s - self.epoch_s) + extra_prefill_s) / PREFILL_WINDOW_S

    def _rebase_before(self, t_s: float) -> None:
        """Move the epoch to `t_s` if loads read at `t_s` would be scaled by too large a factor."""
        if t_s - self.epoch_s > REBASE_AFTER_WINDOWS * PREFILL_WINDOW_S:
            self.prefill_load_at_epoch_s *= decay(t_s - self.epoch_s)
            self.epoch_s = t_s

    def sync(self, workers: Sequence[WorkerState]) -> None:
        """Bring the columns up to date with `workers`: a new list of workers is read in full,
        the same one only where its workers reported changes."""
        if len(workers) != len(self.workers) or not all(map(is_, workers, self.workers)):
            self._log = ChangeLog()  # the old log, and with it the old watches, are dropped
            self.workers = list(workers)
            self._rows = {id(w): row for row, w in enumerate(self.workers)}
            self.profiles = []
            self._resize(len(workers))
            for row, worker in enumerate(self.workers):
                worker.watch(self._log)
                self._refresh(row, worker)
            return
        changed = {id(w): w for w in self._log}
        self._log.clear()
        for key, worker in changed.items():
            self._refresh(self._rows[key], worker)

    def _group_of(self, profile: WorkerProfile) -> int:
        for i, known in enumerate(self.profiles):
            if known is profile:
                return i
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def _refresh(self, row: int, worker: WorkerState) -> None:
        profile = worker.profile
        used = worker.kv_used_tokens
        batch = len(worker.residents) + 1
        self.group[row] = self._group_of(profile)
        self.capacity[row] = worker.kv_capacity_tokens
        self.kv_final[row] = worker.kv_final_tokens
        self.kv_used_floor[row] = used
        self.queued_prefill_s[row] = profile.prefill.time_from_sums(
            worker.queued_prefill_tokens, worker.queued_prefill_sq, worker.queued_prefill_count
        )
        self.step_floor_s[row] = profile.decode_step_s(batch, used)
        self.step_bound_s[row] = profile.decode_step_s(batch, worker.kv_final_tokens)
        self.step_bound_per_token_s[row] = (
            profile.decode_step_s(batch, worker.kv_final_tokens + 1) - self.step_bound_s[row]
        )
        self.min_slo_atgt_s[row] = worker.min_slo_atgt_s
        self._rebase_before(worker.prefill_load_at_s)
        self.prefill_load_at_epoch_s[row] = worker.prefill_load_s * decay(self.epoch_s - worker.prefill_load_at_s)

    def per_profile(self, value_of_profile: Callable[[WorkerProfile], float]) -> np.ndarray:
        """A value of each distinct profile (index = `group`)."""
        return np.array([value_of_profile(p) for p in self.profiles], dtype=float)

    def per_row(self, value_of_profile: Callable[[WorkerProfile], float]) -> np.ndarray:
        """A per-profile value (computed once per distinct profile) spread over the rows."""
        values = self.per_profile(value_of_profile)
        return values[self.group] if len(values) else np.zeros(0)
