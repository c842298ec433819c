"""Pure models: output-length prediction and latency/KV models. No Ray imports."""
