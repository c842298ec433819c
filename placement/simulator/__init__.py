"""Trace-driven discrete-event simulation of LLM serving workers under a placement policy.

`Cluster(trace, profile, policy, queue_order, lengths, config).run()` simulates a trace on
workers that batch continuously as vLLM does; see docs/simulator.md for the model.
"""

from placement.simulator.cluster import Autoscaler, Cluster, ClusterView, SimConfig, SimResult
from placement.simulator.length_model import (
    DEFAULT_LENGTH_MODEL,
    LENGTH_MODELS,
    BucketMeanLengths,
    LengthModel,
    NoisyLengths,
    OracleLengths,
    make_length_model,
)
from placement.simulator.metrics import RequestRecord, Summary
from placement.simulator.worker_engine import EngineOptions, WorkerEngine

__all__ = [
    "DEFAULT_LENGTH_MODEL",
    "LENGTH_MODELS",
    "Autoscaler",
    "BucketMeanLengths",
    "Cluster",
    "ClusterView",
    "EngineOptions",
    "LengthModel",
    "NoisyLengths",
    "OracleLengths",
    "RequestRecord",
    "SimConfig",
    "SimResult",
    "Summary",
    "WorkerEngine",
    "make_length_model",
]
