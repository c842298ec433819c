"""Bad input never breaks the server: hypothesis fuzzes every endpoint's body and headers (wrong
types, huge and negative numbers, NaN, unknown fields, invalid UTF-8, prompts past the context,
empty messages) and each answer must be a 2xx or a 4xx in OpenAI's error shape, never a 5xx or
a hang; the replica must serve normally afterwards. Bodies over `ingress.max_body_bytes` get 413
before they are parsed, with or without a Content-Length.

One real vLLM CPU worker on the tiny model (max_model_len 2048), so bodies the fuzzer gets
right run end to end; those always carry max_tokens <= 4 to stay fast.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import serve_run

pytestmark = pytest.mark.serving
APP = "badinput"
LIMIT = 256 << 10  # ingress.max_body_bytes for this app: small, so over-limit bodies are cheap
TIMEOUT_S = 30
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def base(ray_cluster) -> Any:
    from ray import serve

    serve_run(
        ray_cluster, "serve_app.app:build_app", "workers.num_workers=1", "engine.cpus_per_rank=0.5",
        "ingress.num_cpus=0.25", f"ingress.max_body_bytes={LIMIT}",
        "--name", APP, "--route-prefix", f"/{APP}", name=APP,
    )
    url = f"{ray_cluster.http}/{APP}"
    yield url
    serve.delete(APP)


@pytest.fixture(scope="module")
def http(base) -> Any:
    with httpx.Client(base_url=base, timeout=TIMEOUT_S) as client:
        yield client


# ---- strategies ------------------------------------------------------------------------------
Strategy = st.SearchStrategy[Any]
EXTREME_NUMBERS = st.sampled_from([0, -1, -(2**63), 2**31, 2**63, 2**64, 10**30, -(10**30), 1e308, -1e308, 1e-320,
                                   float("nan"), float("inf"), float("-inf")])
NUMBER_STRINGS = st.sampled_from(["NaN", "nan", "inf", "-Infinity", "1e999", "-0", "0x10", "", " 1 "])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | EXTREME_NUMBERS | NUMBER_STRINGS)
JUNK = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
# Longer than the context (2048 tokens) both as text (several tokens per CJK character) and as ids.
LONG_TEXT = "".join(chr(0x4E00 + i % 700) for i in range(3000))
LONG_IDS = [5 + i % 400 for i in range(2100)]
CLEAN_TEXT = st.text(max_size=40)
# Lone surrogates: JSON escapes them (\ud800) but they have no UTF-8 form; random text almost never
# holds one, so some text is drawn with them mixed in. Also text past the context, and empty text.
ODD_TEXT = (st.text(st.characters() | st.characters(categories=["Cs"]), min_size=1, max_size=20)
            | st.sampled_from(["\ud800", "a\udfffb", "\x00", "\ufeff", "<|im_end|>", LONG_TEXT, ""]))
TEXT = CLEAN_TEXT | ODD_TEXT
# Valid values must finish fast: 1-4 tokens. A wrong value must never parse as a bigger valid one,
# so the wrong ones are out of range or not numbers at all; and no null, nor an absent one in chat,
# which both mean "the rest of the context".
VALID_MAX_TOKENS = st.integers(1, 4)
BAD_MAX_TOKENS = st.sampled_from([0, -1, 2049, 10**6, 2**63, 10**30, 1.5, "many", [], {}, "NaN", 1e308])

# Each field's valid values, and what else may be sent in it (always including junk of any type).
VALID_SAMPLING = {
    "model": st.just("tiny"),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1, exclude_min=True),
    "top_k": st.integers(-1, 600),
    "n": st.just(1),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "stop": st.lists(st.text(min_size=1, max_size=4), max_size=4),
    "seed": st.integers(0, 2**63 - 1),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "ignore_eos": st.booleans(),
    "min_tokens": st.integers(0, 10**9),
    "slo_ttft_ms": st.floats(1, 3_600_000),
    "slo_atgt_ms": st.floats(1, 3_600_000),
}
BAD_SAMPLING = {
    **{k: v | JUNK for k, v in VALID_SAMPLING.items()},
    "model": TEXT | JUNK, "stop": st.lists(TEXT, max_size=5) | TEXT | JUNK, "user": TEXT | JUNK, "logprobs": JUNK,
}
UNKNOWN = st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k not in BAD_SAMPLING), JUNK, max_size=2)

VALID_PROMPT = st.text(min_size=1, max_size=40) | st.lists(st.integers(0, 400), min_size=1, max_size=8)
BAD_PROMPT = (TEXT | st.lists(TEXT, max_size=2) | st.lists(st.integers(-5, 10**6), max_size=8) | st.just(LONG_IDS)
              | st.lists(st.lists(st.integers(0, 600), max_size=4), max_size=2) | JUNK)
ROLE = st.sampled_from(["system", "user", "assistant", "developer", "tool"])


def _message(text: Strategy, role: Strategy, kind: Strategy) -> Strategy:
    parts = st.lists(st.fixed_dictionaries({"type": kind, "text": text}), max_size=2)
    return st.fixed_dictionaries({"role": role, "content": text | parts})


VALID_MESSAGES = st.lists(_message(CLEAN_TEXT, ROLE, st.just("text")), min_size=1, max_size=3)
BAD_MESSAGES = st.lists(_message(TEXT | JUNK, ROLE | JUNK, st.just("text") | JUNK), max_size=3) | JUNK  # [] too


def request(valid: dict[str, Any], bad: dict[str, Any], optional: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """Requests of three kinds: all fields valid (runs end to end unless too long), all valid but
    one (so that one's check is the one reached), and any value in every field. Each may carry
    unknown fields, which must be ignored."""

    def fields(values: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        required = {k: v for k, v in values.items() if k not in optional}
        return st.fixed_dictionaries(required, optional={k: v for k, v in values.items() if k in optional})

    one_bad = st.sampled_from(sorted(bad)).flatmap(lambda k: bad[k].map(lambda v: {k: v}))
    shaped = fields(valid) | st.tuples(fields(valid), one_bad).map(lambda p: {**p[0], **p[1]}) | fields(bad)
    return st.tuples(UNKNOWN, shaped).map(lambda p: {**p[0], **p[1]})


OPTIONAL = tuple(BAD_SAMPLING)
COMPLETION = request({"prompt": VALID_PROMPT, "max_tokens": VALID_MAX_TOKENS, **VALID_SAMPLING},
                     {"prompt": BAD_PROMPT, "max_tokens": BAD_MAX_TOKENS, "echo": JUNK, "suffix": JUNK, **BAD_SAMPLING},
                     OPTIONAL + ("echo", "suffix"))
CHAT = request({"messages": VALID_MESSAGES, "max_tokens": VALID_MAX_TOKENS, **VALID_SAMPLING},
               {"messages": BAD_MESSAGES, "max_tokens": BAD_MAX_TOKENS,
                "max_completion_tokens": VALID_MAX_TOKENS | BAD_MAX_TOKENS, **BAD_SAMPLING},
               OPTIONAL + ("max_completion_tokens",))

TOKENIZE = (request({"prompt": st.text(max_size=40)}, {"prompt": BAD_PROMPT, "add_special_tokens": JUNK}, ())
            | request({"messages": VALID_MESSAGES},
                      {"messages": BAD_MESSAGES, "add_generation_prompt": JUNK, "continue_final_message": JUNK},
                      ("add_generation_prompt", "continue_final_message")))
DETOKENIZE = request({"tokens": st.lists(st.integers(0, 400), max_size=8)}, {"tokens": BAD_PROMPT}, ())
RESPONSES = request({"input": st.text(max_size=40) | VALID_MESSAGES, "max_output_tokens": VALID_MAX_TOKENS},
                    {"input": BAD_MESSAGES | BAD_PROMPT, "max_output_tokens": BAD_MAX_TOKENS, "instructions": JUNK,
                     "temperature": JUNK}, ("instructions", "temperature"))


def _encoded(body: Any) -> bytes:
    # NaN and Infinity are written as such (Python's json reads them back); strings are escaped
    return json.dumps(body).encode()


def bodies(valid_shape: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Mostly the endpoint's own shape with bad values; also any JSON (a list, a number, ...),
    raw bytes (invalid UTF-8 and not JSON), truncated JSON and deep nesting."""
    shaped = valid_shape.map(_encoded)
    return st.one_of(
        shaped, shaped, shaped, shaped,
        JUNK.map(_encoded),
        st.binary(max_size=64),
        shaped.flatmap(lambda raw: st.integers(0, max(len(raw) - 1, 0)).map(lambda cut: raw[:cut])),
        st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
    )


HEADER_VALUE = (st.sampled_from(["1", "0", "true", "TRUE", "False", "yes", "nan", "inf", "-1", "1e999", "", "250"])
                | st.text(st.characters(codec="latin-1", exclude_categories=("Cc",)), max_size=16).map(str.strip))
CONTENT_TYPE = st.sampled_from(["application/json", "application/json; charset=utf-16", "text/plain",
                                "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                "application/vnd.api+json", "application/", ";;"]) | HEADER_VALUE
HEADERS = st.fixed_dictionaries({}, optional={"x-slo-ttft-ms": HEADER_VALUE, "x-slo-atgt-ms": HEADER_VALUE,
                                               "x-aladdin-benchmark": HEADER_VALUE, "content-type": CONTENT_TYPE,
                                               "authorization": HEADER_VALUE, "accept": HEADER_VALUE})


# ---- checks ----------------------------------------------------------------------------------
def assert_openai_error(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    assert 400 <= response.status_code < 500 if status is None else response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), error
    return error


def send(http: httpx.Client, method: str, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
    """One request, its whole body read (streams included); fails on a 5xx, a bad error shape or a
    reply that is not complete within the client timeout."""
    encoded = {k: v.encode("latin-1") for k, v in headers.items()}
    response = http.request(method, path, content=content, headers=encoded)
    assert response.status_code < 500, (content[:300], headers, response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert_openai_error(response)
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
        assert events[-1] == "[DONE]" and not any("error" in json.loads(e) for e in events[:-1]), events
    return response


def assert_still_serving(base: str, http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    out = http.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 3, "ignore_eos": True})
    assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] == 3, out.text


# ---- fuzzing ---------------------------------------------------------------------------------
POST_ROUTES = {"/v1/completions": COMPLETION, "/v1/chat/completions": CHAT, "/v1/responses": RESPONSES,
               "/tokenize": TOKENIZE, "/detokenize": DETOKENIZE}


@pytest.mark.parametrize("path", list(POST_ROUTES))
@FUZZ
@given(data=st.data(), headers=HEADERS)
def test_fuzz_post_routes(http, path, data, headers):
    send(http, "POST", path, data.draw(bodies(POST_ROUTES[path]), label="body"), headers)


@settings(FUZZ, max_examples=30)
@given(path=st.sampled_from(["/v1/models", "/health"]), content=st.binary(max_size=64) | JUNK.map(_encoded),
       headers=HEADERS)
def test_fuzz_get_routes(http, path, content, headers):
    assert send(http, "GET", path, content, headers).status_code == 200


def _text_request(where: str, text: str) -> tuple[str, dict[str, Any]]:
    """A valid request with `text` in one of its string fields."""
    if where in ("content", "part"):
        content = text if where == "content" else [{"type": "text", "text": text}]
        return "/v1/chat/completions", {"messages": [{"role": "user", "content": content}], "max_tokens": 2}
    return "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2, where: text}


@FUZZ
@given(where=st.sampled_from(["prompt", "model", "stop", "user", "content", "part"]), text=TEXT)
def test_fuzz_text_fields(http, where, text):
    """Any text in any string field (the shapes above seldom reach one with the rest valid)."""
    path, body = _text_request(where, text)
    send(http, "POST", path, _encoded(body), {"content-type": "application/json"})


def test_replica_survives_fuzzing(base, http):
    """Runs after the fuzz tests (file order): the same replica still answers normally."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    assert serve.status().applications[APP].status == ApplicationStatus.RUNNING
    assert_still_serving(base, http)


# ---- specific bad inputs ----------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    b'{"prompt": "\xff\xfe caf\xe9"}',  # not UTF-8
    b'{"prompt": "\xed\xa0\x80"}',  # an encoded lone surrogate
    b'{"prompt": "\\ud800", "max_tokens": 2}',  # an escaped one
    b'{"prompt": "hi", "model": "\\udfff"}',  # ... echoed in a 404 message, were it accepted
    b'{"prompt": "hi", "stop": ["\\ud800"], "max_tokens": 2}',
    b"[1, 2]", b"3", b'"prompt"', b"null", b"", b"{", b"[" * 100_000 + b"]" * 100_000,
    b'{"prompt": "hi", "temperature": NaN}', b'{"prompt": "hi", "max_tokens": 1e999}',
    b'{"prompt": "hi", "max_tokens": ' + b"9" * 5000 + b"}",  # past Python's int-parsing limit
])
def test_malformed_bodies_are_400(http, content):
    response = http.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    assert_openai_error(response, 400)


def test_prompt_past_the_context_and_empty_messages(http):
    for prompt in (LONG_TEXT, LONG_IDS):
        error = assert_openai_error(http.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2}), 400)
        assert "maximum context length" in error["message"]  # vLLM's own error
    error = assert_openai_error(http.post("/v1/chat/completions", json={"messages": [], "max_tokens": 2}), 400)
    assert "empty conversation" in error["message"], error


def test_unknown_route_and_method_in_openai_shape(http):
    assert_openai_error(http.get("/v1/nothing"), 404)
    assert_openai_error(http.put("/v1/completions", json={}), 405)


# ---- body size limit --------------------------------------------------------------------------
def _padded(size: int) -> bytes:
    """A valid completion request of exactly `size` bytes (padded with an unknown field)."""
    head = b'{"model": "tiny", "prompt": "hi", "max_tokens": 2, "pad": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def test_body_at_the_limit_is_served(http):
    response = http.post("/v1/completions", content=_padded(LIMIT), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def test_oversized_body_with_content_length_is_413(http):
    error = assert_openai_error(http.post("/v1/completions", content=_padded(LIMIT + 1),
                                          headers={"content-type": "application/json"}), 413)
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"


def test_oversized_chunked_body_is_413(http):
    def chunks():  # a generator: httpx sends it chunked, with no Content-Length
        body = _padded(LIMIT + 1)
        for start in range(0, len(body), 16 << 10):
            yield body[start:start + (16 << 10)]

    response = http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert assert_openai_error(response, 413)["code"] == "request_too_large"


def _raw_request(base: str, head: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """Send a request head and part of its body over a socket, never finishing the body; return
    the status and JSON body read back: proof the server answered without waiting for the rest."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(head.format(path=f"{url.path}/v1/completions").encode() + body)
        reader = sock.makefile("rb")
        status = int(reader.readline().split()[1])
        headers = dict(line.decode().lower().split(": ", 1) for line in iter(reader.readline, b"\r\n"))
        return status, json.loads(reader.read(int(headers["content-length"])))


@pytest.mark.parametrize("head,body", [
    # declares 1 GB and sends nothing of it
    ("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n",
     b""),
    # chunked: one chunk just past the limit, and no final chunk
    ("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"%x\r\n" % (LIMIT + 1) + b"x" * (LIMIT + 1) + b"\r\n"),
])
def test_413_comes_before_the_whole_body(base, head, body):
    status, reply = _raw_request(base, head, body)
    assert status == 413 and reply["error"]["code"] == "request_too_large", reply


def test_still_serving_at_the_end(base, http):
    assert_still_serving(base, http)
