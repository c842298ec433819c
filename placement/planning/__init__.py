"""Capacity planning: the minimal-GPU planner, the worker estimate, the arrival window."""
