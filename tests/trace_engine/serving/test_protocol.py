"""Request parsing and SSE framing of the serving protocol."""

from __future__ import annotations

import pytest

from trace_engine.serving.protocol import ServingError, iter_sse_data, parse_request


def parse(body: object, kind: str = "chat"):
    return parse_request(body, kind, max_tokens_limit=512)  # type: ignore[arg-type]


def test_a_chat_request_is_parsed_with_defaults_and_text_parts_joined() -> None:
    request = parse({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                              {"type": "text", "text": "b"}]}],
                     "temperature": 0, "stop": "END", "seed": 3})
    assert request.prompts == ([{"role": "user", "content": "ab"}],)
    assert request.params.max_tokens is None  # not sent: the engine fills in what fits after the prompt
    assert request.params.greedy and request.params.stop == ("END",)
    assert request.params.batch_key() == ("greedy",)


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 513}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}, "stop"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": "1"}, "seed"),
])
def test_bad_fields_are_named(body: dict, param: str) -> None:
    with pytest.raises(ServingError) as info:
        parse(body)
    assert info.value.status == 400 and info.value.param == param


def test_a_max_tokens_above_the_context_is_refused_naming_the_value_sent() -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(ServingError) as info:
            parse({"model": "m", "messages": [{"role": "user", "content": "x"}], key: 9000})
        assert info.value.param == key and "9000" in info.value.message and "512" in info.value.message
    sent = parse({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 7})
    assert sent.params.max_tokens == 7


def test_completion_prompts_may_be_text_or_token_ids_as_vllm_takes_them() -> None:
    assert parse({"model": "m", "prompt": ["a", "b"]}, "completion").prompts == ("a", "b")
    one = parse({"model": "m", "prompt": [1, 2], "prompt_logprobs": 1}, "completion")
    assert one.prompts == () and one.token_prompts == ((1, 2),) and one.params.prompt_logprobs == 1
    assert parse({"model": "m", "prompt": [[1], [2, 3]]}, "completion").token_prompts == ((1,), (2, 3))
    for bad in ([1, "a"], [[1], "a"], [-1], [True]):
        with pytest.raises(ServingError) as info:
            parse({"model": "m", "prompt": bad}, "completion")
        assert info.value.param == "prompt"


@pytest.mark.parametrize("value", [-1, 21, 1.5, True, "1"])
def test_prompt_logprobs_must_be_a_small_count(value: object) -> None:
    with pytest.raises(ServingError) as info:
        parse({"model": "m", "prompt": [1, 2], "prompt_logprobs": value}, "completion")
    assert info.value.param == "prompt_logprobs"
    with pytest.raises(ServingError, match="stream"):
        parse({"model": "m", "prompt": [1, 2], "prompt_logprobs": 0, "stream": True}, "completion")


def test_sse_events_split_across_reads_are_reassembled() -> None:
    events, rest = iter_sse_data(b'data: {"a":1}\n\ndata: {"b"')
    assert events == [b'{"a":1}'] and rest == b'data: {"b"'
    events, rest = iter_sse_data(rest + b':2}\r\n\r\ndata: [DONE]\n\n')
    assert events == [b'{"b":2}', b"[DONE]"] and rest == b""
