"""The official OpenAI Python SDK, unmodified, against the real supervisor."""

import json

import openai
import pytest


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.base + "/v1", api_key=gateway.token, max_retries=0)


def test_chat_sync(client):
    r = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hello sdk"}])
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.usage.total_tokens > 0


def test_chat_stream(client):
    stream = client.chat.completions.create(
        model="demo", stream=True, messages=[{"role": "user", "content": "stream please"}])
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 1, pieces
    assert "".join(pieces).strip()


def test_responses(client):
    r = client.responses.create(model="demo", input="hello responses")
    assert r.output_text


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert "demo" in ids


def test_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])


def test_wrong_token_raises_authentication_error(gateway):
    c = openai.OpenAI(base_url=gateway.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x"}])


def test_test_upstream_round_trip(client, upstream):
    r = client.chat.completions.create(model="up-model", messages=[{"role": "user", "content": "via upstream"}])
    assert r.choices[0].message.content == "from upstream"
    path, headers, body = upstream.requests[-1]
    assert path == "/v1/chat/completions"
    assert body["messages"][0]["content"] == "via upstream"
    # The client's gateway token is never forwarded to a provider.
    assert "sdk-test-token" not in str(headers)


def test_429_is_retried_honouring_retry_after(gateway, upstream):
    import time
    upstream.script.append((429, {"retry-after": "1"}, {"error": {"message": "slow down", "type": "rate_limit_error"}}))
    c = openai.OpenAI(base_url=gateway.base + "/v1", api_key=gateway.token, max_retries=2)
    before = len(upstream.requests)
    t = time.monotonic()
    r = c.chat.completions.create(model="up-model", messages=[{"role": "user", "content": "retry me"}])
    waited = time.monotonic() - t
    assert r.choices[0].message.content == "from upstream"
    assert len(upstream.requests) - before == 2, "the SDK should have retried once"
    assert waited >= 0.9, f"the SDK did not wait for Retry-After (waited {waited:.2f}s)"


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER, "strict": True}}]


def test_chat_tool_call(client):
    r = client.chat.completions.create(
        model="demo", tools=TOOLS, messages=[{"role": "user", "content": "weather in Paris?"}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "example", "unit": "c"}


def test_chat_stream_tool_call_accumulates(client):
    with client.chat.completions.stream(
            model="demo", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
            messages=[{"role": "user", "content": "weather in Paris?"}]) as s:
        deltas = [e.arguments_delta for e in s if e.type == "tool_calls.function.arguments.delta"]
        final = s.get_final_completion()
    assert len(deltas) > 1, deltas
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert call.function.arguments == "".join(deltas)
    assert json.loads(call.function.arguments) == {"city": "example", "unit": "c"}
    # A strict tool's arguments are parsed by the SDK's own accumulator.
    assert call.function.parsed_arguments == {"city": "example", "unit": "c"}


def test_responses_stream_function_call(client):
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}]
    r = client.responses.create(model="demo", input="weather in Paris?", tools=tools)
    (item,) = r.output
    assert item.type == "function_call" and item.name == "get_weather"
    assert json.loads(item.arguments) == {"city": "example", "unit": "c"}
    with client.responses.stream(model="demo", input="weather in Paris?", tools=tools) as s:
        deltas = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
        final = s.get_final_response()
    assert len(deltas) > 1, deltas
    (item,) = final.output
    assert item.type == "function_call" and item.call_id.startswith("call_")
    assert json.loads(item.arguments) == {"city": "example", "unit": "c"}
