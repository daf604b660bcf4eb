"""The official `openai` client against `troupe serve`: chat and completions,
plain and streamed, usage, stop strings, seeds and logprobs."""

from __future__ import annotations

import math

from helpers import MODEL

ESSAY = [{"role": "user", "content": "Write a long essay about the history of the Roman Empire."}]


def greedy(client, messages, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, messages=messages, **kw)


def test_chat_length_usage_matches_tokenize(client, server):
    r = greedy(client, ESSAY, max_tokens=8)
    assert r.object == "chat.completion"
    assert r.model == MODEL
    assert len(r.choices) == 1
    ch = r.choices[0]
    assert ch.message.role == "assistant"
    assert ch.message.content.strip(), r
    assert ch.finish_reason == "length"
    n_prompt = server.tokenize_messages(ESSAY)
    assert r.usage.prompt_tokens == n_prompt
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_completion_tokens(client):
    long = greedy(client, ESSAY, max_tokens=8).choices[0].message.content
    r = greedy(client, ESSAY, max_completion_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    text = r.choices[0].message.content
    assert text and long.startswith(text), (text, long)
    assert len(text) < len(long)


def test_stop_string_cuts_text(client):
    ref = greedy(client, ESSAY, max_tokens=24)
    full = ref.choices[0].message.content
    # A word from the middle of the greedy text, first occurring there, as
    # the stop string: the reply must end right before it.
    words = [w for w in full.split(" ") if len(w) >= 3]
    assert len(words) >= 4, full
    stop = next((" " + w for w in words[2:] if full.find(" " + w) > 0), None)
    assert stop, full
    cut = full.find(stop)
    r = greedy(client, ESSAY, max_tokens=24, stop=[stop, "never-appears-xyzzy"])
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert stop not in text
    assert text == full[:cut], (text, full, stop)
    assert r.usage.completion_tokens < 24
    # A single string works as well as a list.
    r2 = greedy(client, ESSAY, max_tokens=24, stop=stop)
    assert r2.choices[0].message.content == text
    assert r2.choices[0].finish_reason == "stop"


def test_seed_reproducible(client):
    msgs = [{"role": "user", "content": "Tell me a short story about a dragon."}]
    a = greedy(client, msgs, temperature=0.8, seed=1234, max_tokens=12)
    b = greedy(client, msgs, temperature=0.8, seed=1234, max_tokens=12)
    assert a.choices[0].message.content
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_logprobs(client):
    r = greedy(client, ESSAY, max_tokens=6, logprobs=True, top_logprobs=3)
    ch = r.choices[0]
    assert ch.logprobs is not None and ch.logprobs.content
    entries = ch.logprobs.content
    assert len(entries) == r.usage.completion_tokens == 6
    for e in entries:
        assert e.logprob <= 0.0 and math.isfinite(e.logprob)
        assert len(e.top_logprobs) == 3, e
        tops = [t.logprob for t in e.top_logprobs]
        assert all(t <= 0.0 for t in tops)
        assert tops == sorted(tops, reverse=True), tops
        # Greedy: the chosen token is the most likely one.
        assert math.isclose(e.logprob, max(tops), abs_tol=1e-5), e
        assert e.token == e.top_logprobs[0].token, e
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
    assert "".join(e.token for e in entries) == ch.message.content


def test_chat_logprobs_stream(client):
    """Streamed logprobs carry one entry per token, the same as non-streamed."""
    plain = greedy(client, ESSAY, max_tokens=6, logprobs=True, top_logprobs=2)
    want = [(e.token, round(e.logprob, 4)) for e in plain.choices[0].logprobs.content]
    got = []
    for c in greedy(client, ESSAY, max_tokens=6, logprobs=True, top_logprobs=2, stream=True):
        for ch in c.choices:
            if ch.logprobs and ch.logprobs.content:
                for e in ch.logprobs.content:
                    assert len(e.top_logprobs) == 2
                    got.append((e.token, round(e.logprob, 4)))
    assert got == want


def test_chat_stream_matches_plain(client):
    msgs = [{"role": "user", "content": "Name three colours and describe each one."}]
    plain = greedy(client, msgs, max_tokens=12)
    chunks = list(greedy(client, msgs, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert len(chunks) >= 3
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    last, before = chunks[-1], chunks[-2]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == plain.usage.prompt_tokens
    assert last.usage.completion_tokens == plain.usage.completion_tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert before.choices[0].finish_reason == plain.choices[0].finish_reason
    assert all(c.usage is None for c in chunks[:-1])
    assert all(ch.finish_reason is None for c in chunks[:-2] for ch in c.choices)


def test_chat_stream_stop_and_multibyte(client):
    """Streamed text equals the plain text with stop strings and with
    characters split over several tokens (no U+FFFD in between)."""
    emoji = [{"role": "user", "content": "Reply only with emoji: 🚀🌍🎉 describe a party"}]
    plain = greedy(client, emoji, max_tokens=12).choices[0].message.content
    assert "🚀" in plain and "\ufffd" not in plain, plain
    parts = [c.choices[0].delta.content or "" for c in greedy(client, emoji, max_tokens=12, stream=True)
             if c.choices]
    assert "".join(parts) == plain
    assert all("\ufffd" not in p for p in parts), parts
    stop = " party"
    assert stop in plain[4:], plain
    cut = greedy(client, emoji, max_tokens=12, stop=stop)
    streamed = list(greedy(client, emoji, max_tokens=12, stop=stop, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == cut.choices[0].message.content == plain[: plain.find(stop)]
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_chat_stream_without_usage(client):
    chunks = list(greedy(client, ESSAY, max_tokens=4, stream=True))
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


PROMPT = "The capital of France is Paris. The capital of Germany is"


def test_completions_text_and_token_prompt(client, http):
    a = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    assert a.object == "text_completion"
    ch = a.choices[0]
    assert ch.text.strip()
    assert ch.finish_reason in ("length", "stop")
    ids = http.post("/tokenize", json={"content": PROMPT}).json()["tokens"]
    assert a.usage.prompt_tokens == len(ids)
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    b = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    assert b.choices[0].text == ch.text
    assert b.usage.prompt_tokens == len(ids)
    # One-element lists are accepted as well.
    c = client.completions.create(model=MODEL, prompt=[PROMPT], max_tokens=8, temperature=0)
    assert c.choices[0].text == ch.text


def test_completions_default_max_tokens_is_16(client):
    a = client.completions.create(model=MODEL, prompt="Once upon a time, in a land far away,", temperature=0)
    assert a.usage.completion_tokens <= 16
    if a.choices[0].finish_reason == "length":
        assert a.usage.completion_tokens == 16


def test_completions_stream_matches_plain(client):
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0)
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.text for c in chunks for ch in c.choices)
    assert text == plain.choices[0].text
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1 and usages[0].completion_tokens == plain.usage.completion_tokens
    assert usages[0].prompt_tokens == plain.usage.prompt_tokens


def test_completions_logprobs(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
    ch = r.choices[0]
    lp = ch.logprobs
    assert lp is not None
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == ch.text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert l <= 0.0
        assert len(top) == 2, top
        assert all(v <= 0.0 for v in top.values())
        assert tok in top and math.isclose(top[tok], max(top.values()), abs_tol=1e-5)
        assert math.isclose(l, top[tok], abs_tol=1e-5)
