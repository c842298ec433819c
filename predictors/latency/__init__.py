"""Latency and KV-cache models of serving workers, fitted from profiles (no vLLM import here)."""

from predictors.latency.families import (
    ProfileFamily,
    UnknownProfileFamily,
    list_profile_families,
    load_profile_family,
)
from predictors.latency.profile import (
    DecodeModel,
    FitReport,
    KVCacheModel,
    PrefillModel,
    WorkerProfile,
    family_name,
    load_profile,
)

__all__ = [
    "DecodeModel",
    "FitReport",
    "KVCacheModel",
    "PrefillModel",
    "ProfileFamily",
    "UnknownProfileFamily",
    "WorkerProfile",
    "family_name",
    "list_profile_families",
    "load_profile",
    "load_profile_family",
]
