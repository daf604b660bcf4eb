"""SIGTERM: refuse new work at once, let running streams finish (or cut them
off with an error event after --drain-timeout), exit 0."""

from __future__ import annotations

import json
import signal
import time

import httpx

from helpers import MODEL, SSEStream, assert_openai_error, chat_body


def _read_tokens(st: SSEStream, n: int) -> list[str]:
    texts = []
    while len(texts) < n:
        ev = st.next_event()
        assert ev is not None, "stream ended early"
        kind, data = ev
        assert kind == "message", ev
        c = json.loads(data)
        if c["choices"] and c["choices"][0]["delta"].get("content"):
            texts.append(c["choices"][0]["delta"]["content"])
    return texts


def test_sigterm_drains_running_stream(start_server):
    s = start_server("drain30", ["--drain-timeout", "30", "-c", "1024"])
    n = 40
    st = SSEStream(s, "/v1/chat/completions",
                   chat_body("Write a long poem about autumn leaves.", max_tokens=n, stream=True,
                             stream_options={"include_usage": True}))
    assert st.status == 200
    first = _read_tokens(st, 2)
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    time.sleep(0.1)
    r = httpx.get(s.url + "/ready", timeout=10)
    assert r.status_code == 503, r.text
    assert r.json()["status"] == "draining"
    r = httpx.post(s.url + "/v1/chat/completions", json=chat_body("Hi", max_tokens=2), timeout=10)
    assert_openai_error(r, 503, code="draining")
    assert r.headers.get("retry-after", "").isdigit(), r.headers
    r = httpx.post(s.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}, timeout=10)
    assert_openai_error(r, 503, code="draining")
    assert httpx.get(s.url + "/health", timeout=10).status_code == 200
    # The stream goes on to its natural end.
    events = list(st.events())
    st.close()
    assert events, "no events after SIGTERM"
    assert all(kind == "message" for kind, _ in events), events[-3:]
    assert events[-1] == ("message", "[DONE]"), events[-3:]
    chunks = [json.loads(d) for _, d in events[:-1]]
    usage = chunks[-1]["usage"]
    finish = chunks[-2]["choices"][0]["finish_reason"]
    assert finish in ("length", "stop")
    if finish == "length":
        assert usage["completion_tokens"] == n
    text = "".join(first) + "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip()
    rc = s.wait(timeout=30 + 15 - (time.monotonic() - t0))
    assert rc == 0, s.log_tail()
    assert "stopped" in s.log_text()


def test_sigterm_drain_timeout_cuts_stream(start_server):
    s = start_server("drain1", ["--drain-timeout", "1", "-c", "4096"])
    st = SSEStream(s, "/v1/chat/completions",
                   chat_body("Write a very long story about a lighthouse keeper.", max_tokens=2000, stream=True))
    assert st.status == 200
    _read_tokens(st, 2)
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    events = list(st.events())
    cut_after = time.monotonic() - t0
    st.close()
    assert events, "no events after SIGTERM"
    kind, data = events[-1]
    assert kind == "error", events[-3:]
    assert ("message", "[DONE]") not in events
    body = json.loads(data)
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert err["type"] == "server_error" and err["message"], err
    assert all(k == "message" for k, _ in events[:-1])
    assert cut_after < 1 + 5, f"stream was cut {cut_after:.1f}s after SIGTERM"
    rc = s.wait(timeout=1 + 15)
    assert rc == 0, s.log_tail()
    assert time.monotonic() - t0 < 1 + 15


def test_sigint_idle_exits_promptly(start_server):
    """With nothing in flight, SIGINT (Ctrl-C) stops the server at once."""
    s = start_server("idle", ["-c", "512"])
    t0 = time.monotonic()
    s.signal(signal.SIGINT)
    assert s.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5
