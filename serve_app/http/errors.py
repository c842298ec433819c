"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with a 4xx status."""

from __future__ import annotations

from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class OpenAIError(Exception):
    """An error to return to the client as-is. Safe to raise through a DeploymentHandle."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}  # HTTP headers of the error response (e.g. Retry-After)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def __reduce__(self):  # keep keyword fields when pickled across Ray processes
        return (_rebuild, (self.status, self.message, self.param, self.code, self.headers))


def _rebuild(status: int, message: str, param: str | None, code: str | None,
             headers: dict[str, str] | None = None) -> OpenAIError:
    return OpenAIError(status, message, param=param, code=code, headers=headers)


def from_validation_errors(errors: list[dict[str, Any]]) -> OpenAIError:
    """Turn pydantic/FastAPI validation errors into one 400 naming the first bad field."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return OpenAIError(400, "request body is not valid JSON", code="invalid_json")
    message = first.get("msg", "invalid request")
    return OpenAIError(400, f"{param}: {message}" if param else message, param=param)


def check_model(requested: str | None, served: str) -> None:
    """404 in OpenAI's shape when a request names a model other than the one served."""
    if requested is not None and requested != served:
        raise OpenAIError(404, f"The model `{requested}` does not exist.", param="model", code="model_not_found")
