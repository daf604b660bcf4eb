"""Raw HTTP against the shared default server: the small endpoints, error
statuses and shapes, hostile bodies and /metrics."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from helpers import MODEL, assert_kv_gauges_add_up, assert_openai_error, chat_body, parse_prometheus

JSON = {"Content-Type": "application/json"}


# --- small endpoints ---------------------------------------------------------

def test_models(http):
    r = http.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    # The base model first, then one entry per persona.
    assert ids[0] == MODEL and all(i.startswith("persona:") for i in ids[1:]) and len(ids) > 30
    m = body["data"][0]
    assert m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"]
    one = http.get(f"/v1/models/{MODEL}")
    assert one.status_code == 200 and one.json() == m
    assert_openai_error(http.get("/v1/models/no-such-model"), 404, code="model_not_found")
    assert http.get("/v1/models/persona:unit-7").json()["id"] == "persona:unit-7"
    assert_openai_error(http.get("/v1/models/persona:nobody"), 404, code="model_not_found")


def test_health_and_ready(http):
    r = http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = http.get("/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "model": MODEL}


def test_tokenize_detokenize_round_trip(http):
    text = "Hello, world! Ünïcödé → 東京 🚀 and some   spaces."
    r = http.post("/tokenize", json={"content": text, "add_special": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) > 5
    assert body["max_model_len"] == 4096
    assert all(isinstance(t, int) for t in body["tokens"])
    d = http.post("/detokenize", json={"tokens": body["tokens"]})
    assert d.status_code == 200, d.text
    assert d.json()["content"] == text
    # `prompt` is an alias of `content`; the model may be named.
    r2 = http.post("/tokenize", json={"prompt": text, "add_special": False, "model": MODEL})
    assert r2.json()["tokens"] == body["tokens"]


def test_tokenize_messages_counts_chat_prompt(http, client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    n = http.post("/tokenize", json={"messages": msgs}).json()["count"]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=1, temperature=0)
    assert r.usage.prompt_tokens == n
    # Without the generation prompt the count is smaller.
    n2 = http.post("/tokenize", json={"messages": msgs, "add_generation_prompt": False}).json()["count"]
    assert n2 < n


def test_tokenize_errors(http):
    assert_openai_error(http.post("/tokenize", json={}), 400, param="content")
    assert_openai_error(
        http.post("/tokenize", json={"content": "x", "messages": [{"role": "user", "content": "x"}]}),
        400, param="content")
    assert_openai_error(http.post("/tokenize", json={"content": "x", "model": "nope"}), 404, code="model_not_found")
    assert_openai_error(http.post("/detokenize", json={"tokens": [10**9]}), 400, param="tokens")


# --- errors --------------------------------------------------------------------

HI = [{"role": "user", "content": "hi"}]

BAD_BODIES = {
    "missing_messages": ({"model": MODEL}, None),
    "missing_model": ({"messages": HI}, None),
    "messages_not_list": ({"model": MODEL, "messages": "hi"}, None),
    "max_tokens_string": ({"model": MODEL, "messages": HI, "max_tokens": "5"}, None),
    "temperature_string": ({"model": MODEL, "messages": HI, "temperature": "hot"}, None),
    "stream_not_bool": ({"model": MODEL, "messages": HI, "stream": "yes"}, None),
    "empty_messages": ({"model": MODEL, "messages": []}, "messages"),
    "temperature_3": ({"model": MODEL, "messages": HI, "temperature": 3.0}, "temperature"),
    "temperature_negative": ({"model": MODEL, "messages": HI, "temperature": -0.5}, "temperature"),
    "n_2": ({"model": MODEL, "messages": HI, "n": 2}, "n"),
    "role_wizard": ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    "role_tool_second": ({"model": MODEL, "messages": [HI[0], {"role": "tool", "content": "x"}]},
                         "messages[1].role"),
    "image_part": ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, "messages[0].content"),
    "max_tokens_0": ({"model": MODEL, "messages": HI, "max_tokens": 0}, "max_tokens"),
    "top_logprobs_without_logprobs": ({"model": MODEL, "messages": HI, "top_logprobs": 2}, "top_logprobs"),
    "top_logprobs_21": ({"model": MODEL, "messages": HI, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    "too_many_stops": ({"model": MODEL, "messages": HI, "stop": [str(i) for i in range(17)]}, "stop"),
    "tools": ({"model": MODEL, "messages": HI, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    "top_k_negative": ({"model": MODEL, "messages": HI, "top_k": -5}, "top_k"),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_chat_400(http, name):
    body, param = BAD_BODIES[name]
    r = http.post("/v1/chat/completions", json=body)
    err = assert_openai_error(r, 400, kind="invalid_request_error")
    if param is not None:
        assert err["param"] == param, err


def test_malformed_json_400(http):
    for raw in (b"{not json", b'{"model": "x", "messages": [', b"", b"null", b"[1,2,3]", b'"just a string"'):
        r = http.post("/v1/chat/completions", content=raw, headers=JSON)
        assert_openai_error(r, 400)


def test_missing_content_type_400(http):
    r = http.post("/v1/chat/completions", content=json.dumps(chat_body("hi")).encode(),
                  headers={"Content-Type": "text/plain"})
    assert_openai_error(r, 400)


COMPLETION_BAD = {
    "n_3": {"n": 3},
    "best_of": {"best_of": 2},
    "echo": {"echo": True},
    "suffix": {"suffix": "tail"},
    "logprobs_6": {"logprobs": 6},
    "two_prompts": {"prompt": ["a", "b"]},
    "empty_prompt": {"prompt": ""},
    "token_out_of_vocab": {"prompt": [1, 2, 999999999]},
}


@pytest.mark.parametrize("name", sorted(COMPLETION_BAD))
def test_completions_400(http, name):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, **COMPLETION_BAD[name]}
    assert_openai_error(http.post("/v1/completions", json=body), 400, kind="invalid_request_error")


def test_unknown_model_404(http):
    r = http.post("/v1/chat/completions", json={**chat_body("hi"), "model": "gpt-4o"})
    assert_openai_error(r, 404, code="model_not_found", param="model")
    r = http.post("/v1/completions", json={"model": "gpt-4o", "prompt": "hi"})
    assert_openai_error(r, 404, code="model_not_found", param="model")


def test_unknown_model_404_openai_client(client):
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=HI)
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"


def test_unknown_route_404(http):
    assert_openai_error(http.get("/v1/nope"), 404, code="not_found")
    assert_openai_error(http.post("/v2/chat/completions", json={}), 404, code="not_found")
    # `/` is the web chat; unknown files next to it are API-style 404s too.
    assert_openai_error(http.get("/index.html"), 404, code="not_found")
    assert_openai_error(http.get("/ui/nope.js"), 404, code="not_found")


def test_wrong_method_405(http):
    assert_openai_error(http.get("/v1/chat/completions"), 405)
    assert_openai_error(http.post("/v1/models", json={}), 405)


@pytest.mark.parametrize("max_tokens", [2**64 - 1, 2**64 - 20, 2**63])
def test_huge_max_tokens_is_context_error(http, max_tokens):
    """max_tokens near u64::MAX must be refused like any other too-large
    budget, not crash the handler."""
    for path, body in (("/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": max_tokens}),
                       ("/v1/chat/completions", {"model": MODEL, "messages": HI,
                                                 "max_completion_tokens": max_tokens}),
                       ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": max_tokens})):
        try:
            r = http.post(path, json=body)
        except httpx.RemoteProtocolError:
            pytest.fail(f"{path} with {list(body)[-1]}={max_tokens}: the server closed the connection "
                        "without a response (the handler panicked; see the server log)")
        assert_openai_error(r, 400, code="context_length_exceeded")
    still_serving(http)


# --- robustness -----------------------------------------------------------------

def still_serving(http):
    assert http.get("/health").status_code == 200
    r = http.post("/v1/chat/completions", json=chat_body("Say hi.", max_tokens=2))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def test_garbage_bodies_4xx(http):
    bodies = [
        bytes(range(256)) * 64,
        b"\xff\xfe\x00garbage\x00\x01",
        b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"\xff\xfe\xc3"}]}',  # bad UTF-8
        b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"\\ud800"}]}',  # lone surrogate
        b"{" * 100_000,
    ]
    for b in bodies:
        r = http.post("/v1/chat/completions", content=b, headers=JSON)
        assert 400 <= r.status_code < 500, (b[:40], r.status_code, r.text[:200])
        assert_openai_error(r, r.status_code)
    still_serving(http)


@pytest.mark.parametrize("where", ["top", "content", "unknown_field", "objects"])
def test_deep_nesting_4xx(http, where):
    n = 200_000
    arr = b"[" * n + b"]" * n
    body = {
        "top": arr,
        "content": b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":' + arr + b"}]}",
        "unknown_field": b'{"model":"' + MODEL.encode() + b'","x":' + arr + b',"messages":[]}',
        "objects": b'{"model":"' + MODEL.encode() + b'","x":' + b'{"a":' * n + b"1" + b"}" * n + b"}",
    }[where]
    r = http.post("/v1/chat/completions", content=body, headers=JSON)
    assert_openai_error(r, 400)
    assert len(r.content) < 100_000, "error body echoes the whole nesting"
    still_serving(http)


def test_one_megabyte_prompt_over_context(http):
    content = "hello world " * 90_000  # ~1 MB, under the 4 MiB default limit
    t = time.monotonic()
    r = http.post("/v1/chat/completions", json=chat_body(content, max_tokens=5))
    err = assert_openai_error(r, 400, code="context_length_exceeded", param="messages")
    assert "4096" in err["message"]
    assert time.monotonic() - t < 30
    # Completions and /tokenize handle it as well.
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": content, "max_tokens": 5})
    assert_openai_error(r, 400, code="context_length_exceeded", param="prompt")
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": content}]})
    assert_openai_error(r, 400, code="context_length_exceeded")
    still_serving(http)


def test_garbage_http_on_socket(server, http):
    """Non-HTTP bytes and a half-sent request do not hurt the server."""
    for payload in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
                    b"GARBAGE / HTTP/9.9\r\n\r\n",
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mod"):
        with socket.create_connection((server.host, server.port), timeout=10) as s:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server answered and closed already
            try:
                reply = s.recv(4096)
            except (ConnectionResetError, socket.timeout):
                reply = b""
            if reply:
                assert reply.startswith(b"HTTP/1.1 4"), reply[:100]
    still_serving(http)


# --- metrics ------------------------------------------------------------------------

def test_metrics_exposition(http):
    http.post("/v1/chat/completions", json=chat_body("Hello!", max_tokens=3))
    http.post("/v1/chat/completions", json={"model": MODEL})  # a 400
    r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    m = parse_prometheus(text)
    assert m['troupe_requests_total{route="/v1/chat/completions",status="200"}'] >= 1
    assert m['troupe_requests_total{route="/v1/chat/completions",status="400"}'] >= 1
    for name in ("troupe_time_to_first_token_seconds", "troupe_inter_token_latency_seconds"):
        assert f"# TYPE {name} histogram" in text
        assert m[f'{name}_bucket{{le="+Inf"}}'] >= 1
        assert m[f"{name}_count"] == m[f'{name}_bucket{{le="+Inf"}}']
        buckets = [v for k, v in m.items() if k.startswith(name + "_bucket")]
        assert buckets == sorted(buckets), "histogram buckets must be cumulative"
    for g in ("troupe_queue_depth", "troupe_running_sequences", "troupe_prefix_cache_hit_tokens_total",
              'troupe_kv_blocks{state="used"}', 'troupe_kv_blocks{state="free"}',
              'troupe_kv_blocks{state="cached"}', "troupe_cancelled_requests_total"):
        assert g in m, g
    assert "# TYPE troupe_requests_total counter" in text
    assert "# TYPE troupe_queue_depth gauge" in text
    # Idle: nothing queued, running or holding KV blocks.
    assert m["troupe_queue_depth"] == 0
    assert m["troupe_running_sequences"] == 0
    assert m['troupe_kv_blocks{state="used"}'] == 0
    assert m["troupe_kv_blocks_total"] > 0
    assert m['troupe_kv_blocks{state="cached"}'] > 0, "finished prompts stay cached for reuse"
    assert_kv_gauges_add_up(m)


def test_prefix_cache_hits(server, client):
    msgs = [
        {"role": "system", "content": "You are a meticulous librarian who answers in one sentence."},
        {"role": "user", "content": "Which shelf holds the books about the history of astronomy and navigation?"},
    ]
    client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, temperature=0)
    before = server.metrics()["troupe_prefix_cache_hit_tokens_total"]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2, temperature=0)
    after = server.metrics()["troupe_prefix_cache_hit_tokens_total"]
    assert after > before
    cached = r.usage.prompt_tokens_details.cached_tokens
    assert cached == after - before
    # Whole blocks of the prompt are reused (the last token is always computed).
    assert r.usage.prompt_tokens - 16 <= cached < r.usage.prompt_tokens
