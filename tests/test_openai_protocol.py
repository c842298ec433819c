import pytest
from pydantic import ValidationError

from serve_app.http.errors import OpenAIError, from_validation_errors
from serve_app.http.openai_protocol import ChatCompletionRequest, CompletionRequest


def test_prompt_batch_of_one_is_unwrapped():
    assert CompletionRequest(prompt=["hi"]).prompt == "hi"
    assert CompletionRequest(prompt=[[1, 2, 3]]).prompt == [1, 2, 3]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": ""},
        {"prompt": []},
        {"prompt": ["a", "b"]},
        {"prompt": "x", "max_tokens": 0},
        {"prompt": "x", "max_tokens": -3},
        {"prompt": "x", "n": 2},
        {"prompt": "x", "temperature": -1},
        {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
        {"prompt": 5},
    ],
)
def test_bad_completion_bodies_are_rejected(body):
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate(body)


def test_chat_needs_messages_and_takes_max_completion_tokens():
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": []})
    req = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
         "max_completion_tokens": 7}
    )
    assert req.max_tokens == 7 and req.messages[0].text == "ab"


def test_sampling_kwargs_clamp_min_tokens():
    req = CompletionRequest(prompt="x", min_tokens=50, ignore_eos=True, stop="END")
    kw = req.sampling(10)
    assert kw["max_tokens"] == 10 and kw["min_tokens"] == 10
    assert kw["ignore_eos"] is True and kw["stop"] == ["END"]


def test_validation_error_becomes_openai_400_naming_the_field():
    try:
        CompletionRequest.model_validate({"prompt": "x", "max_tokens": 0})
    except ValidationError as exc:
        err = from_validation_errors(exc.errors())
    assert err.status == 400 and err.param == "max_tokens"
    assert set(err.body()["error"]) == {"message", "type", "param", "code"}


def test_openai_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(OpenAIError(404, "nope", param="model", code="model_not_found")))
    assert (err.status, err.param, err.code) == (404, "model", "model_not_found")


@pytest.mark.parametrize(("field", "value"), [
    ("logit_bias", {"50256": -100}), ("response_format", {"type": "json_object"}), ("best_of", 2),
    ("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "required"),
    ("repetition_penalty", 1.3), ("min_p", 0.1), ("stop_token_ids", [2]), ("guided_json", {"type": "object"}),
    ("structured_outputs", {"json": {}}), ("prompt_logprobs", 0), ("skip_special_tokens", False), ("best_of", True),
])
def test_a_field_this_server_cannot_honour_is_refused_naming_it(field, value):
    """Nothing is silently ignored (issue 17): a 400 naming the field, never a 200 that pretends."""
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate({"prompt": "x", field: value})
    err = from_validation_errors(info.value.errors())
    assert err.status == 400 and err.param == field and "not supported" in err.message


def test_the_same_fields_asking_for_nothing_are_accepted():
    CompletionRequest.model_validate({
        "prompt": "x", "logit_bias": {}, "response_format": {"type": "text"}, "best_of": 1.0, "tools": [],
        "tool_choice": "none", "repetition_penalty": 1.0, "min_p": 0, "stop_token_ids": [], "guided_json": None,
        "skip_special_tokens": True, "unknown_extension": 7,
    })
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2})


@pytest.mark.parametrize(("field", "value"), [
    ("chat_template", "{{ messages }}"), ("chat_template_kwargs", {"enable_thinking": True}),
    ("add_generation_prompt", False), ("continue_final_message", True), ("echo", True),
    ("truncate_prompt_tokens", 8),
])
def test_chat_rendering_options_this_server_does_not_apply_are_refused(field, value):
    body = {"messages": [{"role": "user", "content": "a"}]}
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({**body, field: value})
    assert from_validation_errors(info.value.errors()).param == field
    ChatCompletionRequest.model_validate({**body, "add_generation_prompt": True, "chat_template_kwargs": {}})
