"""Placement in Serve: the placement actor, request router, autoscaling policy, node scaler."""
