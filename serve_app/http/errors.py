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
        headers: dict[str, str] | None = None, body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}  # HTTP headers of the error response (e.g. Retry-After)
        self._body = body  # the whole body when it is someone else's (vLLM's errors)

    def body(self) -> dict[str, Any]:
        if self._body is not None:
            return self._body
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def __reduce__(self):  # keep keyword fields when pickled across Ray processes
        return (_rebuild, (self.status, self.message, self.param, self.code, self.headers, self._body))


def _rebuild(status: int, message: str, param: str | None, code: str | None,
             headers: dict[str, str] | None = None, body: dict[str, Any] | None = None) -> OpenAIError:
    return OpenAIError(status, message, param=param, code=code, headers=headers, body=body)


def from_validation_errors(errors: list[dict[str, Any]]) -> OpenAIError:
    """Turn pydantic/FastAPI validation errors into one 400 naming the first bad field."""
    first = errors[0] if errors else {}
    # pydantic names the validators a value went through in its path ("function-wrap[...]")
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not str(p).startswith("function-")]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return OpenAIError(400, "request body is not valid JSON", code="invalid_json")
    message = first.get("msg", "invalid request")
    return OpenAIError(400, f"{param}: {message}" if param else message, param=param)


def check_unicode(value: Any, path: str = "") -> None:
    """400 naming the field when a string in a JSON body has no UTF-8 form: JSON may carry lone
    surrogates ("\\ud800") that decode to such strings, and the tokenizer, the engine and an
    error message echoing them would all fail on them."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise OpenAIError(400, f"{path or 'body'}: string is not valid Unicode (lone surrogate)",
                              param=path or None) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(key, path)
            check_unicode(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_unicode(item, f"{path}.{i}" if path else str(i))
