"""Seeded synthetic workloads the project generates to evaluate policies beyond the traces in
../shared/data: each stresses something the Azure conversation trace does not.

- `prompt-heavy`: ~2k-token prompts, ~20-token replies (summarization, RAG, classification):
  prefill dominates and every prefill is a large stall for the short replies decoding beside
  it, the case an average prefill share hides.
- `long-replies`: ~300-token prompts, ~600-token replies (generation, code): decode and KV
  dominate; prefills hardly matter.
- `bursty`: Gamma inter-arrivals with coefficient of variation 4 (bursts of arrivals much
  closer than Poisson's), lengths near the Azure conversation trace's: TTFT under bursts.

Lengths are log-normal, stated by median (what a provider reads off a dashboard) and
coefficient of variation. Rates are chosen so that on `llama-2-7b-a100` TP1 (SLOs 1 s / 50 ms)
the fewest workers are a handful to a dozen at x1, and durations so that one simulation takes
seconds: 10-20 minutes of arrivals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from placement.traces import LengthMix, TraceRequest, synthetic


def lengths_by_median(prompt_median: float, prompt_cv: float, reply_median: float, reply_cv: float) -> LengthMix:
    """The `LengthMix` (parametrized by mean) of log-normals with these medians and CVs: for a
    log-normal, mean = median x sqrt(1 + cv^2)."""
    grow = lambda cv: math.sqrt(1 + cv * cv)  # noqa: E731
    return LengthMix(prompt_median * grow(prompt_cv), prompt_cv, reply_median * grow(reply_cv), reply_cv)


@dataclass(frozen=True)
class SyntheticWorkload:
    """A named, seeded synthetic workload (see the module docstring)."""

    name: str
    rate_per_s: float
    duration_s: float
    lengths: LengthMix
    arrival: str = "poisson"
    arrival_cv: float = 1.0
    seed: int = 0

    def trace(self, seed: int | None = None, rate_per_s: float | None = None,
              duration_s: float | None = None, requests: int | None = None) -> list[TraceRequest]:
        """The trace, optionally at another seed, rate, duration or request count."""
        rate = self.rate_per_s if rate_per_s is None else rate_per_s
        n = requests if requests is not None else int(rate * (self.duration_s if duration_s is None else duration_s))
        return synthetic(n, rate, arrival=self.arrival, cv=self.arrival_cv, lengths=self.lengths,
                         seed=self.seed if seed is None else seed)


PRESETS: dict[str, SyntheticWorkload] = {
    w.name: w
    for w in (
        SyntheticWorkload("prompt-heavy", 30.0, 600.0, lengths_by_median(2000, 0.5, 20, 1.0), seed=1),
        SyntheticWorkload("long-replies", 20.0, 900.0, lengths_by_median(300, 0.5, 600, 0.5), seed=2),
        SyntheticWorkload("bursty", 8.0, 1200.0, LengthMix(), arrival="gamma", arrival_cv=4.0, seed=3),
    )
}


def preset(name: str) -> SyntheticWorkload:
    """A preset by name; ValueError naming the valid ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; presets: {', '.join(PRESETS)}") from None
