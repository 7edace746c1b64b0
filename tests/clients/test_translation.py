"""Translation through the real supervisor, read by the official SDKs' own parsers: every cell of
client API (Chat Completions, Messages, Responses) x provider API, against the strict dialect
upstream (dialect_upstream.py): text streamed and not, a streamed tool call through the SDKs'
stream accumulators, a multi-turn conversation sending the tool result back, and a Claude
Code-shaped request to an OpenAI-compatible provider."""

import json

import anthropic
import openai
import pytest

from dialect_upstream import ARGS, SUNNY

APIS = ["chat", "messages", "responses"]
MODEL = {"chat": "m-chat", "messages": "m-msg", "responses": "m-resp"}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CELLS = [(c, p) for c in APIS for p in APIS]


@pytest.fixture
def oai(dialect_gateway):
    return openai.OpenAI(base_url=dialect_gateway.base + "/v1", api_key=dialect_gateway.token, max_retries=0)


@pytest.fixture
def ant(dialect_gateway):
    return anthropic.Anthropic(base_url=dialect_gateway.base, api_key=dialect_gateway.token, max_retries=0)


def tools_for(client):
    if client == "chat":
        return [{"type": "function", "function": {"name": "weather", "description": "d", "parameters": SCHEMA}}]
    if client == "messages":
        return [{"name": "weather", "description": "d", "input_schema": SCHEMA}]
    return [{"type": "function", "name": "weather", "description": "d", "parameters": SCHEMA}]


def text_of(client, oai, ant, model, stream):
    """The answer's text as the SDK gives it, and the model it reports."""
    msgs = [{"role": "user", "content": "hi"}]
    if client == "chat":
        if stream:
            with oai.chat.completions.stream(model=model, messages=msgs) as s:
                c = s.get_final_completion()
        else:
            c = oai.chat.completions.create(model=model, messages=msgs)
        return c.choices[0].message.content, c.model
    if client == "messages":
        if stream:
            with ant.messages.stream(model=model, max_tokens=100, messages=msgs) as s:
                m = s.get_final_message()
        else:
            m = ant.messages.create(model=model, max_tokens=100, messages=msgs)
        return "".join(b.text for b in m.content if b.type == "text"), m.model
    if stream:
        with oai.responses.stream(model=model, input="hi") as s:
            r = s.get_final_response()
    else:
        r = oai.responses.create(model=model, input="hi")
    return r.output_text, r.model


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("client,provider", CELLS)
def test_text(client, provider, stream, oai, ant, dialect_upstream):
    text, model = text_of(client, oai, ant, MODEL[provider], stream)
    assert text == f"Hello from {provider}!"
    assert model == MODEL[provider]
    assert_served_by(dialect_upstream, provider)


def assert_served_by(upstream, provider):
    """The last upstream request went to `provider`'s API path."""
    path, _, _ = upstream.last()
    assert path == {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}[provider]


def streamed_tool_call(client, oai, ant, model):
    """(name, parsed arguments) of the one tool call, accumulated by the SDK's stream helper."""
    if client == "chat":
        with oai.chat.completions.stream(model=model, messages=[{"role": "user", "content": "weather?"}],
                                         tools=tools_for("chat")) as s:
            c = s.get_final_completion()
        calls = c.choices[0].message.tool_calls
        assert c.choices[0].finish_reason == "tool_calls"
        assert len(calls) == 1
        return calls[0].function.name, json.loads(calls[0].function.arguments)
    if client == "messages":
        with ant.messages.stream(model=model, max_tokens=200, messages=[{"role": "user", "content": "weather?"}],
                                 tools=tools_for("messages")) as s:
            m = s.get_final_message()
        uses = [b for b in m.content if b.type == "tool_use"]
        assert m.stop_reason == "tool_use"
        assert len(uses) == 1
        return uses[0].name, uses[0].input
    with oai.responses.stream(model=model, input="weather?", tools=tools_for("responses")) as s:
        r = s.get_final_response()
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1
    return calls[0].name, json.loads(calls[0].arguments)


@pytest.mark.parametrize("client,provider", CELLS)
def test_streamed_tool_call(client, provider, oai, ant, dialect_upstream):
    assert streamed_tool_call(client, oai, ant, MODEL[provider]) == ("weather", ARGS)
    assert_served_by(dialect_upstream, provider)


@pytest.mark.parametrize("client,provider", CELLS)
def test_multi_turn_with_tool_results(client, provider, oai, ant, dialect_upstream):
    model = MODEL[provider]
    if client == "chat":
        msgs = [{"role": "user", "content": "weather?"}]
        first = oai.chat.completions.create(model=model, messages=msgs, tools=tools_for("chat"))
        call = first.choices[0].message.tool_calls[0]
        assert json.loads(call.function.arguments) == ARGS
        msgs += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        second = oai.chat.completions.create(model=model, messages=msgs, tools=tools_for("chat"))
        text = second.choices[0].message.content
    elif client == "messages":
        msgs = [{"role": "user", "content": "weather?"}]
        first = ant.messages.create(model=model, max_tokens=200, messages=msgs, tools=tools_for("messages"))
        use = next(b for b in first.content if b.type == "tool_use")
        assert use.input == ARGS
        msgs += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}]
        second = ant.messages.create(model=model, max_tokens=200, messages=msgs, tools=tools_for("messages"))
        text = "".join(b.text for b in second.content if b.type == "text")
    else:
        first = oai.responses.create(model=model, input="weather?", tools=tools_for("responses"))
        call = next(o for o in first.output if o.type == "function_call")
        assert json.loads(call.arguments) == ARGS
        items = [{"role": "user", "content": "weather?"},
                 {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                 {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
        second = oai.responses.create(model=model, input=items, tools=tools_for("responses"))
        text = second.output_text
    assert text == SUNNY
    assert_served_by(dialect_upstream, provider)
    # The provider got the tool result in its own API's form.
    _, _, body = dialect_upstream.last()
    if provider == "chat":
        assert body["messages"][-1]["role"] == "tool" and "sunny" in json.dumps(body["messages"][-1])
    elif provider == "messages":
        assert body["messages"][-1]["content"][0]["type"] == "tool_result"
    else:
        assert body["input"][-1]["type"] == "function_call_output"


def test_claude_code_shaped_request_to_an_openai_compatible_provider(ant, dialect_upstream):
    system = [{"type": "text", "text": "You are Claude Code."},
              {"type": "text", "text": "Project rules.", "cache_control": {"type": "ephemeral"}}]
    tools = [{"name": "Bash", "description": "run a command", "input_schema": {
        "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}},
             {"name": "weather", "description": "d", "input_schema": SCHEMA}]
    msgs = [{"role": "user", "content": [{"type": "text", "text": "weather?", "cache_control": {"type": "ephemeral"}}]}]
    with ant.messages.stream(model="m-chat", max_tokens=4096, system=system, tools=tools, messages=msgs,
                             metadata={"user_id": "user_abc"}, thinking={"type": "enabled", "budget_tokens": 2048},
                             extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"}) as s:
        m = s.get_final_message()
    use = next(b for b in m.content if b.type == "tool_use")
    assert (use.name, use.input) == ("weather", ARGS)
    path, headers, body = dialect_upstream.last()
    assert path == "/v1/chat/completions"
    assert not any(k.lower().startswith("anthropic-") for k in headers), headers
    assert body["messages"][0]["role"] in ("system", "developer")
    assert "Project rules." in json.dumps(body["messages"][0])
    assert body["user"] == "user_abc"
    assert [t["function"]["name"] for t in body["tools"]] == ["Bash", "weather"]
