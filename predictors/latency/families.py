"""Profile families: the tensor-parallel variants of one `<model>-<hardware>`, read from the
JSON committed under predictors/profiles/<family>/tp<N>.json (package data)."""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable

from pydantic import BaseModel, ConfigDict

from predictors.latency.profile import WorkerProfile, family_name

_TP_FILE = re.compile(r"^tp(\d+)\.json$")


class UnknownProfileFamily(LookupError):
    """Raised for a family name with no committed profiles; the message lists the known ones."""


class ProfileFamily(BaseModel):
    """All committed tensor-parallel variants of one model on one hardware kind."""

    model_config = ConfigDict(frozen=True)

    name: str
    profiles: dict[int, WorkerProfile]

    @property
    def tps(self) -> list[int]:
        """Tensor-parallel degrees available, ascending."""
        return sorted(self.profiles)

    def profile(self, tp: int) -> WorkerProfile:
        """The profile for this tensor-parallel degree."""
        try:
            return self.profiles[tp]
        except KeyError:
            raise KeyError(f"family {self.name} has no tp={tp} profile (available: {self.tps})") from None


def _profiles_root() -> Traversable:
    return resources.files("predictors").joinpath("profiles")


def list_profile_families() -> list[str]:
    """Names of the committed profile families, sorted."""
    root = _profiles_root()
    return sorted(
        d.name for d in root.iterdir() if d.is_dir() and any(_TP_FILE.match(f.name) for f in d.iterdir())
    )


def load_profile_family(name: str) -> ProfileFamily:
    """Load a committed family such as `llama-2-7b-a100` or `tiny-cpu`."""
    folder = _profiles_root().joinpath(name)
    files = [f for f in folder.iterdir() if _TP_FILE.match(f.name)] if folder.is_dir() else []
    if not files:
        raise UnknownProfileFamily(
            f"unknown profile family {name!r}; available: {', '.join(list_profile_families()) or 'none'}"
        )
    profiles: dict[int, WorkerProfile] = {}
    for f in files:
        profile = WorkerProfile.model_validate_json(f.read_text())
        tp = int(_TP_FILE.match(f.name).group(1))  # type: ignore[union-attr]
        if profile.tp != tp or family_name(profile.model, profile.hardware) != name:
            raise ValueError(f"{name}/{f.name} holds {profile.family} tp={profile.tp}; the path and the file disagree")
        profiles[tp] = profile
    return ProfileFamily(name=name, profiles=profiles)
