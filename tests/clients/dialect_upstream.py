"""A strict test upstream speaking the three provider APIs as the real servers do: OpenAI Chat
Completions (/v1/chat/completions), Anthropic Messages (/v1/messages) and OpenAI Responses
(/v1/responses), JSON and SSE. It rejects, with that API's 400, what the real API rejects (unknown
top-level fields, Anthropic without max_tokens or anthropic-version, non-alternating turns, tool
shapes of another API), and records every request.

What it answers is decided by the request, so multi-turn tests need no script: a request with tools
and no tool result yet gets a call of `weather` with ARGS (streamed as many small argument pieces;
a Chat stream sends id and name in its first chunk, as OpenAI does: the openai SDK's own accumulator
fails on a name that comes later, even natively; the Rust e2e tests cover that split through the
translator); a request carrying a tool result
gets SUNNY; any other request gets "Hello from <api>!"."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS = {"city": "Paris", "days": [1, 2], "note": 'a "quoted" word'}
SUNNY = "It is sunny in Paris."
PATHS = {"/v1/chat/completions": "chat", "/v1/messages": "messages", "/v1/responses": "responses"}

CHAT_KEYS = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
             "temperature", "top_p", "stop", "tools", "tool_choice", "parallel_tool_calls", "user",
             "response_format", "reasoning_effort", "n", "seed", "metadata", "store"}
MESSAGES_KEYS = {"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
                 "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier"}
RESPONSES_KEYS = {"model", "input", "instructions", "stream", "max_output_tokens", "temperature", "top_p",
                  "tools", "tool_choice", "parallel_tool_calls", "store", "text", "reasoning", "user",
                  "safety_identifier", "metadata", "include", "truncation"}


def check(api, headers, body):
    """None if the real API would accept the request, else its complaint."""
    keys = {"chat": CHAT_KEYS, "messages": MESSAGES_KEYS, "responses": RESPONSES_KEYS}[api]
    extra = sorted(set(body) - keys)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    tools = body.get("tools") or []
    if api == "chat":
        msgs = body.get("messages")
        if not msgs:
            return "messages: Field required"
        for i, m in enumerate(msgs):
            if m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
                return f"messages[{i}].role: invalid"
            if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
                return f"messages[{i}].tool_call_id: Field required"
            for c in m.get("tool_calls") or []:
                if not isinstance(c.get("function", {}).get("arguments"), str):
                    return f"messages[{i}].tool_calls: arguments must be a string"
        if any(t.get("type") != "function" or "name" not in t.get("function", {}) for t in tools):
            return "tools: {type: function, function: {name}} required"
    elif api == "messages":
        if "anthropic-version" not in {k.lower() for k in headers}:
            return "anthropic-version: header is required"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
        prev = None
        for i, m in enumerate(body.get("messages") or []):
            if m.get("role") not in ("user", "assistant") or m["role"] == prev or (i == 0 and m["role"] != "user"):
                return f"messages.{i}: roles must alternate, starting with user"
            prev = m["role"]
            for b in m["content"] if isinstance(m["content"], list) else []:
                if b.get("type") == "text" and not b.get("text"):
                    return f"messages.{i}: text content blocks must be non-empty"
                if b.get("type") == "tool_use" and not isinstance(b.get("input"), dict):
                    return f"messages.{i}: tool_use.input must be an object"
        if any("name" not in t or not isinstance(t.get("input_schema"), dict) for t in tools):
            return "tools: name and input_schema required"
    else:
        inp = body.get("input")
        if not isinstance(inp, (str, list)):
            return "input: Field required"
        for i, it in enumerate(inp if isinstance(inp, list) else []):
            if it.get("type", "message") != "message" and not isinstance(it.get("call_id"), str):
                return f"input[{i}].call_id: Field required"
        if any(t.get("type") != "function" or "name" not in t for t in tools):
            return "tools: flat {type: function, name} required"
    return None


def has_tool_result(api, body):
    if api == "chat":
        return any(m.get("role") == "tool" for m in body["messages"])
    if api == "messages":
        return any(isinstance(m["content"], list) and any(b.get("type") == "tool_result" for b in m["content"])
                   for m in body["messages"])
    return isinstance(body["input"], list) and any(it.get("type") == "function_call_output" for it in body["input"])


def pieces(s, n):
    return [s[i:i + n] for i in range(0, len(s), n)]


def error_body(api, message):
    if api == "messages":
        return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


def answer_json(api, model, text, tool):
    args = json.dumps(ARGS)
    if api == "chat":
        msg = ({"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "weather", "arguments": args}}]}
               if tool else {"role": "assistant", "content": text})
        return {"id": "chatcmpl-up1", "object": "chat.completion", "created": 1700000000, "model": model,
                "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls" if tool else "stop",
                             "logprobs": None}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}
    if api == "messages":
        content = ([{"type": "tool_use", "id": "toolu_abc", "name": "weather", "input": ARGS}] if tool
                   else [{"type": "text", "text": text}])
        return {"id": "msg_up1", "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 11, "output_tokens": 7}}
    return {"id": "resp_up1", "object": "response", "created_at": 1700000000, "status": "completed",
            "model": model, "output": [responses_item(text, tool)],
            "usage": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18,
                      "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}}


def responses_item(text, tool):
    if tool:
        return {"type": "function_call", "id": "fc_up1", "call_id": "call_abc", "name": "weather",
                "arguments": json.dumps(ARGS), "status": "completed"}
    return {"type": "message", "id": "msg_up1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def data(v):
    return f"data: {json.dumps(v)}\n\n"


def event(name, v):
    return f"event: {name}\ndata: {json.dumps(v)}\n\n"


def answer_sse(api, model, text, tool):
    args = json.dumps(ARGS)
    out = []
    if api == "chat":
        def chunk(delta, finish=None):
            return data({"id": "chatcmpl-up1", "object": "chat.completion.chunk", "created": 1700000000,
                         "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        out.append(chunk({"role": "assistant", "content": ""}))
        if tool:
            out.append(chunk({"content": None, "tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                                                                "function": {"name": "weather", "arguments": ""}}]}))
            out += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces(args, 3)]
        else:
            out += [chunk({"content": p}) for p in pieces(text, 4)]
        out.append(chunk({}, "tool_calls" if tool else "stop"))
        out.append(data({"id": "chatcmpl-up1", "object": "chat.completion.chunk", "created": 1700000000,
                         "model": model, "choices": [],
                         "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}))
        out.append("data: [DONE]\n\n")
    elif api == "messages":
        out.append(event("message_start", {"type": "message_start", "message": {
            "id": "msg_up1", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 1}}}))
        out.append(event("ping", {"type": "ping"}))
        if tool:
            out.append(event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": "toolu_abc", "name": "weather", "input": {}}}))
            out += [event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "input_json_delta", "partial_json": p}})
                    for p in pieces(args, 3)]
        else:
            out.append(event("content_block_start", {"type": "content_block_start", "index": 0,
                                                     "content_block": {"type": "text", "text": ""}}))
            out += [event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": p}})
                    for p in pieces(text, 4)]
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        out.append(event("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 7}}))
        out.append(event("message_stop", {"type": "message_stop"}))
    else:
        seq = iter(range(10 ** 6))

        def ev(name, v):
            v = dict(v, type=name, sequence_number=next(seq))
            return event(name, v)
        head = {"id": "resp_up1", "object": "response", "created_at": 1700000000, "status": "in_progress",
                "model": model, "output": []}
        out += [ev("response.created", {"response": head}), ev("response.in_progress", {"response": head})]
        if tool:
            out.append(ev("response.output_item.added", {"output_index": 0, "item": {
                "type": "function_call", "id": "fc_up1", "call_id": "call_abc", "name": "weather", "arguments": "",
                "status": "in_progress"}}))
            out += [ev("response.function_call_arguments.delta", {"item_id": "fc_up1", "output_index": 0, "delta": p})
                    for p in pieces(args, 3)]
            out.append(ev("response.function_call_arguments.done",
                          {"item_id": "fc_up1", "output_index": 0, "arguments": args}))
        else:
            out.append(ev("response.output_item.added", {"output_index": 0, "item": {
                "type": "message", "id": "msg_up1", "status": "in_progress", "role": "assistant", "content": []}}))
            part = {"item_id": "msg_up1", "output_index": 0, "content_index": 0}
            out.append(ev("response.content_part.added", dict(part, part={"type": "output_text", "text": "",
                                                                           "annotations": []})))
            out += [ev("response.output_text.delta", dict(part, delta=p)) for p in pieces(text, 4)]
            out.append(ev("response.output_text.done", dict(part, text=text)))
            out.append(ev("response.content_part.done", dict(part, part={"type": "output_text", "text": text,
                                                                          "annotations": []})))
        out.append(ev("response.output_item.done", {"output_index": 0, "item": responses_item(text, tool)}))
        out.append(ev("response.completed", {"response": answer_json("responses", model, text, tool)}))
    return out


class DialectUpstream:
    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._json(200, {"object": "list", "data": []})

            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                api = PATHS.get(self.path)
                with upstream.lock:
                    upstream.requests.append((self.path, dict(self.headers), body))
                if api is None:
                    return self._json(404, error_body("chat", f"no such path {self.path}"))
                problem = check(api, self.headers, body)
                if problem:
                    return self._json(400, error_body(api, problem))
                tool = bool(body.get("tools")) and not has_tool_result(api, body)
                text = SUNNY if has_tool_result(api, body) else f"Hello from {api}!"
                if not body.get("stream"):
                    return self._json(200, answer_json(api, body["model"], text, tool))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for frame in answer_sse(api, body["model"], text, tool):
                    b = frame.encode()
                    self.wfile.write(f"{len(b):x}\r\n".encode() + b + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def _json(self, status, obj):
                b = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def last(self):
        with self.lock:
            return self.requests[-1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
