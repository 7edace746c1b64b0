"""The official Anthropic Python SDK, unmodified, against the real supervisor."""

import anthropic
import pytest


@pytest.fixture
def client(gateway):
    return anthropic.Anthropic(base_url=gateway.base, api_key=gateway.token, max_retries=0)


def test_messages_create(client):
    m = client.messages.create(model="demo", max_tokens=64, messages=[{"role": "user", "content": "hello claude"}])
    assert m.type == "message"
    assert m.role == "assistant"
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason
    assert m.usage.output_tokens > 0


def test_messages_stream(client):
    with client.messages.stream(model="demo", max_tokens=64,
                                messages=[{"role": "user", "content": "stream to me"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.strip()
    assert final.content[0].text == text


def test_count_tokens(client):
    r = client.messages.count_tokens(model="demo", messages=[{"role": "user", "content": "count these tokens"}])
    assert r.input_tokens > 0


def test_unknown_model_raises_not_found(client):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}])


WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object",
                     "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
                     "required": ["city", "days"]},
}


def test_messages_tool_use(client):
    m = client.messages.create(model="demo", max_tokens=64, tools=[WEATHER_TOOL],
                               messages=[{"role": "user", "content": "weather in Paris?"}])
    assert m.stop_reason == "tool_use"
    (block,) = m.content
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.name == "get_weather"
    assert block.input == {"city": "example", "days": 1}


def test_messages_stream_tool_use_accumulates(client):
    with client.messages.stream(model="demo", max_tokens=64, tools=[WEATHER_TOOL],
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=[{"role": "user", "content": "weather in Paris?"}]) as s:
        partial = [e.partial_json for e in s if e.type == "input_json"]
        final = s.get_final_message()
    assert len(partial) > 1, partial
    assert final.stop_reason == "tool_use"
    (block,) = final.content
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.name == "get_weather"
    assert block.input == {"city": "example", "days": 1}
