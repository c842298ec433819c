"""Optional Bearer API keys for the HTTP API.

The keys live in this module's state, set by the ingress replica at start (`set_api_keys`) and
read by the ingress's HTTP middleware before any body is parsed. They are kept here, not as a
global of serve_app.http.ingress, because Serve copies the ingress class by value when it builds the
deployment: a global assigned from its methods would not be the one the middleware reads.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

_keys: frozenset[str] = frozenset()


def set_api_keys(keys: Iterable[str]) -> None:
    """Accept these keys from now on (none: the API is open)."""
    global _keys
    _keys = frozenset(keys)


def authorized(path: str, headers: Mapping[str, str]) -> bool:
    """Whether a request may proceed: always for non-/v1/ paths (health) or with no keys set;
    else it needs `Authorization: Bearer <a key>`, compared in constant time."""
    if not _keys or "/v1/" not in path:
        return True
    scheme, _, token = headers.get("authorization", "").partition(" ")
    # compare with every key, so the time taken does not tell which prefix matched
    return scheme.lower() == "bearer" and any([hmac.compare_digest(token, key) for key in _keys])
