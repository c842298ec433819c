"""Tooling around the runtime: CLI, benchmarks, load generator, soak, demo. The runtime never imports it."""
