"""Pure placement algorithms: request/worker state, feasibility, the Aladdin policy and
baselines, queue orderings, error-aware rebalancing, the minimal-GPU planner and the
trace-driven simulator. No Ray, no vLLM imports."""
