"""Evaluation: policy comparison, the workload matrix, decision-time bench, simulator fidelity."""
