"""The worker deployment and the engines behind it (vLLM, sim)."""
