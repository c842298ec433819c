"""How the bench commands hand over a result: its JSON to a file if asked, and the JSON or
a one-line summary on stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol


class BenchResult(Protocol):
    def to_dict(self) -> dict[str, Any]: ...

    def summary(self) -> str: ...


def print_result(result: BenchResult, as_json: bool, out: str | None) -> None:
    """Write `result` as JSON to `out` (if given); print the JSON (`as_json`) or its summary."""
    text = json.dumps(result.to_dict(), indent=2)
    if out:
        Path(out).write_text(text + "\n")
    print(text if as_json else result.summary())
