"""Greedy output is the same as the CLI's, the same under concurrency, and a
client that goes away frees its sequence."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import BIN, MODEL, SSEStream, chat_body, data_args, stream_text

CLI_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a CPU does in one sentence.",
]


@pytest.mark.parametrize("prompt", CLI_PROMPTS)
def test_greedy_matches_cli_generate(client, prompt):
    n = 16
    cli = subprocess.run(
        [str(BIN), *data_args(), "generate", "-m", MODEL, "-p", prompt, "--temp", "0", "-n", str(n)],
        capture_output=True, timeout=180,
    )
    assert cli.returncode == 0, cli.stderr.decode(errors="replace")
    want = cli.stdout.decode("utf-8")
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=n)
    assert r.choices[0].message.content == want, cli.stderr.decode(errors="replace")[-300:]


CONCURRENT_PROMPTS = [
    "Describe a sunset over the ocean.",
    "List some fruits that are red.",
    "How do airplanes fly?",
    "Write a limerick about a cat.",
    "What is photosynthesis?",
    "Give me three tips for learning to cook.",
    "Why is the sky blue?",
    "Tell me about the moon landing in 1969.",
]


def test_concurrent_streams_match_sequential(client, server):
    def run(prompt: str) -> tuple[str, float, float]:
        t0 = time.monotonic()
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=24,
            stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return text, t0, time.monotonic()

    t_seq = time.monotonic()
    sequential = [run(p)[0] for p in CONCURRENT_PROMPTS]
    print(f"sequential {time.monotonic() - t_seq:.1f}s")
    assert all(sequential)
    barrier = threading.Barrier(len(CONCURRENT_PROMPTS))

    def together(p):
        barrier.wait(timeout=30)
        return run(p)

    peak = [0.0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], server.metrics()["troupe_running_sequences"])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(len(CONCURRENT_PROMPTS)) as ex:
            results = list(ex.map(together, CONCURRENT_PROMPTS))
    finally:
        stop.set()
        watcher.join(timeout=10)
    # The engine batched them (the count is sampled, so allow a little).
    assert peak[0] >= 6, f"at most {peak[0]} sequences ran at once"
    concurrent = [r[0] for r in results]
    print(f"concurrent {max(r[2] for r in results) - min(r[1] for r in results):.1f}s")
    # They really overlapped: every stream started before any ended.
    assert max(r[1] for r in results) < min(r[2] for r in results)
    for p, a, b in zip(CONCURRENT_PROMPTS, sequential, concurrent):
        assert a == b, f"prompt {p!r}: sequential {a!r} != concurrent {b!r}"


def test_client_disconnect_frees_sequence(server):
    before = server.metrics()["troupe_cancelled_requests_total"]
    s = SSEStream(server, "/v1/chat/completions",
                  chat_body("Write a very long story about a journey across the mountains.", max_tokens=1500,
                            stream=True))
    assert s.status == 200
    got = 0
    for ev, data in s.events():
        assert ev == "message"
        c = json.loads(data)
        if c["choices"] and c["choices"][0]["delta"].get("content"):
            got += 1
        if got >= 3:
            break
    assert got >= 3
    assert server.metrics()["troupe_running_sequences"] == 1
    s.close()
    t = time.monotonic()
    deadline = t + 1.5
    while True:
        m = server.metrics()
        done = (m["troupe_running_sequences"] == 0 and m['troupe_kv_blocks{state="used"}'] == 0
                and m["troupe_cancelled_requests_total"] >= before + 1)
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert m["troupe_running_sequences"] == 0, m
    assert m['troupe_kv_blocks{state="used"}'] == 0, m
    assert m["troupe_cancelled_requests_total"] >= before + 1, m
    assert m["troupe_requests_in_flight"] == 0, m


def test_client_disconnect_non_streamed(server):
    """A plain (non-streamed) request whose client goes away is cancelled too."""
    before = server.metrics()["troupe_cancelled_requests_total"]
    body = json.dumps(chat_body("Write a very long story about a journey across the sea.", max_tokens=1500)).encode()
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    deadline = time.monotonic() + 30
    while True:
        m = server.metrics()
        if m["troupe_running_sequences"] == 1 and m["troupe_requests_in_flight"] == 1:
            break
        assert time.monotonic() < deadline, m
        time.sleep(0.05)
    sock.close()
    deadline = time.monotonic() + 1.5
    while True:
        m = server.metrics()
        if m["troupe_running_sequences"] == 0 and m["troupe_cancelled_requests_total"] >= before + 1:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert m["troupe_running_sequences"] == 0, m
    assert m['troupe_kv_blocks{state="used"}'] == 0, m
    assert m["troupe_cancelled_requests_total"] >= before + 1, m
    assert m["troupe_requests_in_flight"] == 0, m


def test_stream_sse_format_raw(server):
    """The raw SSE: `data: {json}` events, then `data: [DONE]`, as text/event-stream."""
    s = SSEStream(server, "/v1/chat/completions", chat_body("Hi!", max_tokens=4, stream=True))
    assert s.status == 200
    assert s.headers.get("content-type", "").startswith("text/event-stream")
    text, chunks = stream_text(s.events())
    assert s.next_event() is None, "nothing may follow [DONE]"
    s.close()
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_ignore_eos_gives_fixed_length(client):
    """`ignore_eos` (llama.cpp/vLLM extension) runs past end-of-turn to max_tokens."""
    msgs = [{"role": "user", "content": "Reply with just the word yes."}]
    free = client.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=64)
    assert free.choices[0].finish_reason == "stop"
    assert free.usage.completion_tokens < 64
    fixed = client.chat.completions.create(
        model=MODEL, messages=msgs, temperature=0, max_tokens=64, extra_body={"ignore_eos": True})
    assert fixed.choices[0].finish_reason == "length"
    assert fixed.usage.completion_tokens == 64
