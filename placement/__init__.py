"""Pure placement algorithms: request/worker state, feasibility, packing policies and
baselines, the minimal-GPU planner and the trace-driven simulator. No Ray, no vLLM imports.

Until the Aladdin policy lands, workers are routed by Ray Serve's power-of-two choices.
"""
