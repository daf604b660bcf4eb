"""Servers started with special flags: API keys, a small body limit, a small
context, a tiny queue."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from helpers import MODEL, Server, SSEStream, assert_kv_gauges_add_up, assert_openai_error, chat_body

KEY = "test-key-0123456789"


def test_api_key(start_server):
    s = start_server("auth", ["--api-key", KEY, "--api-key", "second-key", "-c", "512"], api_key=KEY)
    url = s.url
    body = chat_body("Hi", max_tokens=2)
    # No key, a wrong key, a malformed header: 401 in OpenAI's shape.
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                    {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}):
        r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert_openai_error(r, 401, code="invalid_api_key")
        r = httpx.get(url + "/v1/models", headers=headers, timeout=30)
        assert_openai_error(r, 401, code="invalid_api_key")
    # /health stays open.
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    # The right keys work, raw and through the client.
    for k in (KEY, "second-key"):
        r = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {k}"},
                       timeout=60)
        assert r.status_code == 200, r.text
    c = s.openai(api_key=KEY)
    assert [m.id for m in c.models.list().data][0] == MODEL
    assert c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                     max_tokens=2, temperature=0).choices[0].message.content
    with pytest.raises(openai.AuthenticationError) as e:
        s.openai(api_key="nope").models.list()
    assert e.value.status_code == 401
    # The 401s were counted.
    m = s.metrics()
    assert m['troupe_requests_total{route="/v1/chat/completions",status="401"}'] >= 5


@pytest.fixture(scope="module")
def small(logdir):
    """-c 256 and a 64 KiB body limit."""

    s = Server(logdir, "small-ctx", ["-c", "256", "--max-body-bytes", "65536"]).start()
    yield s
    s.kill()


def test_body_limit_413(small):
    with small.client() as c:
        pad = "x" * 70_000
        r = c.post("/v1/chat/completions", json=chat_body(pad))
        assert_openai_error(r, 413, code="request_too_large")
        r = c.post("/tokenize", json={"content": pad})
        assert_openai_error(r, 413, code="request_too_large")

        # Without Content-Length (chunked upload) the limit holds too.
        def gen():
            yield b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"'
            for _ in range(20):
                yield b"y" * 8192
            yield b'"}]}'

        r = c.post("/v1/chat/completions", content=gen(), headers={"Content-Type": "application/json"})
        assert_openai_error(r, 413, code="request_too_large")
        # Just under the limit: parsed, then refused for the context instead.
        r = c.post("/v1/chat/completions", json=chat_body("hello " * 10_000))
        assert_openai_error(r, 400, code="context_length_exceeded")
        assert c.get("/health").status_code == 200


def _messages_of_length(server, lo: int, hi: int):
    """User messages whose chat prompt has between lo and hi tokens."""
    k = 40
    for _ in range(60):
        msgs = [{"role": "user", "content": "Please repeat: " + "apple banana cherry " * k}]
        n = server.tokenize_messages(msgs)
        if lo <= n <= hi:
            return msgs, n
        k += -1 if n > hi else 1
    raise AssertionError("could not size the prompt")


def test_context_boundary(small):
    msgs, p = _messages_of_length(small, 245, 250)
    with small.client() as c:
        assert c.post("/tokenize", json={"messages": msgs}).json()["max_model_len"] == 256
        m = 256 - p
        ok = c.post("/v1/chat/completions", json={
            "model": MODEL, "messages": msgs, "max_tokens": m, "temperature": 0})
        assert ok.status_code == 200, ok.text
        u = ok.json()["usage"]
        assert u["prompt_tokens"] == p
        assert 1 <= u["completion_tokens"] <= m
        if ok.json()["choices"][0]["finish_reason"] == "length":
            assert u["completion_tokens"] == m
        for field in ("max_tokens", "max_completion_tokens"):
            r = c.post("/v1/chat/completions", json={
                "model": MODEL, "messages": msgs, field: m + 1, "temperature": 0})
            err = assert_openai_error(r, 400, code="context_length_exceeded", param="messages")
            assert "256" in err["message"] and str(p) in err["message"], err
        # Completions: the same boundary on a token prompt.
        ids = c.post("/tokenize", json={"messages": msgs}).json()["tokens"]
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": ids, "max_tokens": m + 1})
        assert_openai_error(r, 400, code="context_length_exceeded", param="prompt")
        # A prompt filling the whole context with no max_tokens: nothing left.
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": ids + ids})
        assert_openai_error(r, 400, code="context_length_exceeded")


def test_context_limit_openai_client(small):
    msgs, p = _messages_of_length(small, 245, 250)
    c = small.openai()
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=256 - p + 1)
    assert e.value.code == "context_length_exceeded"


def test_queue_full_429(start_server):
    s = start_server("queue", ["--max-concurrent", "1", "--max-queue", "1", "-c", "2048"])
    long = chat_body("Write a very long story about a robot who learns to paint.", max_tokens=1500,
                     stream=True)
    held = []
    try:
        for _ in range(2):
            st = SSEStream(s, "/v1/chat/completions", long)
            assert st.status == 200
            ev, data = st.next_event()  # the role chunk comes at once
            assert ev == "message" and json.loads(data)["choices"][0]["delta"]["role"] == "assistant"
            held.append(st)
        m = s.metrics()
        assert m["troupe_requests_in_flight"] == 2, m
        with s.client() as c:
            for path, body in (("/v1/chat/completions", chat_body("Hi", max_tokens=2)),
                               ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2})):
                t = time.monotonic()
                r = c.post(path, json=body)
                took = time.monotonic() - t
                assert_openai_error(r, 429, code="queue_full")
                assert r.headers.get("retry-after", "").isdigit(), r.headers
                assert int(r.headers["retry-after"]) >= 1
                assert took < 2.0, f"429 took {took:.2f}s"
            # Non-generation routes are not limited.
            assert c.get("/health").status_code == 200
            assert c.post("/tokenize", json={"content": "hi"}).status_code == 200
            # The engine admits the first and queues the second (admission
            # happens at its next step, so allow it a moment).
            deadline = time.monotonic() + 20
            while True:
                m = s.metrics()
                now = (m["troupe_running_sequences"], m["troupe_queue_depth"])
                if now == (1, 1) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            gauges = {k: v for k, v in m.items() if "requests_total" not in k and "_seconds" not in k}
            assert now == (1, 1), gauges
            assert m['troupe_kv_blocks{state="used"}'] > 0, gauges
            assert_kv_gauges_add_up(m)
    finally:
        for st in held:
            st.close()
    # Once the clients are gone the slots come back.
    deadline = time.monotonic() + 20
    with s.client() as c:
        while True:
            r = c.post("/v1/chat/completions", json=chat_body("Hi", max_tokens=2))
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
