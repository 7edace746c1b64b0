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
