"""Pure placement (no Ray, no vLLM imports). The core at the top: request/worker state,
feasibility and interference, the policies (`policies/`), admission, queue orderings,
error-aware rebalancing, the closed loop, and the `PlacementController` the serving actor
adapts; `planning/` (the minimal-GPU planner and the worker estimate); evaluation in
`simulator/` (trace-driven, running the core's code) and `evaluation/` (compare, workload
matrix, decision bench, fidelity)."""
