"""Conversations over the API: stored in SQLite, replies streamed and
persisted (user turn first, assistant row streaming → done / cancelled),
owned by the API key that made them, trimmed to the context, and intact
after `kill -9`."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import httpx

from helpers import Server, assert_kv_gauges_add_up, assert_openai_error, sse_events

PERSONA = "captain-quill"


def create(http, persona: str | None = PERSONA, **extra) -> dict:
    body = {"persona": persona, **extra} if persona else extra
    r = http.post("/v1/conversations", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def say(http, cid: str, content: str, max_tokens: int = 12, **extra) -> tuple[str, list[dict], httpx.Response]:
    """Posts a message, streamed; returns the text, the chunks and the response."""
    body = {"content": content, "max_tokens": max_tokens, **extra}
    with http.stream("POST", f"/v1/conversations/{cid}/messages", json=body) as r:
        if r.status_code != 200:
            r.read()
            return "", [], r
        text, chunks = [], []
        for ev, data in sse_events(r):
            assert ev == "message", (ev, data)
            if data == "[DONE]":
                return "".join(text), chunks, r
            c = json.loads(data)
            chunks.append(c)
            for ch in c["choices"]:
                text.append(ch["delta"].get("content") or "")
    raise AssertionError("stream ended without [DONE]")


def wait_status(http, cid: str, mid: int, want: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        msgs = http.get(f"/v1/conversations/{cid}").json()["messages"]
        m = next(m for m in msgs if m["id"] == mid)
        if m["status"] == want or time.monotonic() > deadline:
            return m
        time.sleep(0.1)


def test_create_opens_with_the_greeting(http):
    c = create(http, title="  Sea   stories ")
    assert c["id"].startswith("conv_") and c["object"] == "conversation"
    assert (c["persona"], c["model"], c["title"]) == (PERSONA, f"persona:{PERSONA}", "Sea stories")
    greeting = http.get(f"/v1/personas/{PERSONA}").json()["greeting"]
    [m] = c["messages"]
    assert (m["role"], m["content"], m["status"]) == ("assistant", greeting, "done")
    alt = create(http, greeting=1)
    assert alt["messages"][0]["content"] != greeting
    bare = create(http, None)
    assert bare["persona"] is None and bare["messages"] == [] and bare["model"]


def test_create_refuses_bad_input(http):
    assert_openai_error(http.post("/v1/conversations", json={"persona": "nobody"}), 404, "persona_not_found")
    assert_openai_error(http.post("/v1/conversations", json={"persona": PERSONA, "greeting": 99}), 400,
                        param="greeting")
    assert_openai_error(http.post("/v1/conversations", json={"persona": PERSONA, "colour": 1}), 400)
    r = http.post("/v1/conversations", content=b"{not json", headers={"content-type": "application/json"})
    assert_openai_error(r, 400)


def test_reply_streams_and_both_turns_are_stored(http):
    c = create(http)
    text, chunks, r = say(http, c["id"], "What should I pack for a long trip?", max_tokens=16)
    assert r.status_code == 200 and r.headers["x-troupe-turns-omitted"] == "0"
    info = chunks[0]["conversation"]
    assert info["id"] == c["id"] and info["turns_omitted"] == 0
    assert all(ch["object"] == "chat.completion.chunk" and ch["model"] == f"persona:{PERSONA}" for ch in chunks)
    usage = [ch["usage"] for ch in chunks if ch.get("usage")]
    assert len(usage) == 1 and usage[0]["completion_tokens"] >= 1
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert text.strip()
    got = http.get(f"/v1/conversations/{c['id']}").json()
    assert got["title"] == "What should I pack for a long trip?", "untitled chats take the first message"
    greeting, user, reply = got["messages"]
    assert (user["id"], user["role"], user["content"], user["status"]) == (
        info["user_message_id"], "user", "What should I pack for a long trip?", "done")
    assert (reply["id"], reply["role"], reply["status"]) == (info["assistant_message_id"], "assistant", "done")
    assert reply["content"] == text
    assert reply["usage"] == {"prompt_tokens": usage[0]["prompt_tokens"],
                              "completion_tokens": usage[0]["completion_tokens"]}
    assert [m["seq"] for m in got["messages"]] == [1, 2, 3]


def test_reply_without_streaming_and_history_is_replayed(http):
    c = create(http)
    r1 = http.post(f"/v1/conversations/{c['id']}/messages",
                   json={"content": "Name a colour.", "max_tokens": 8, "stream": False})
    assert r1.status_code == 200, r1.text
    b1 = r1.json()
    assert b1["object"] == "chat.completion" and b1["conversation"]["turns_omitted"] == 0
    r2 = http.post(f"/v1/conversations/{c['id']}/messages",
                   json={"content": "And another one?", "max_tokens": 8, "stream": False})
    b2 = r2.json()
    # The second prompt holds the first exchange, and reuses its cache.
    assert b2["usage"]["prompt_tokens"] > b1["usage"]["prompt_tokens"] + 5
    assert b2["usage"]["prompt_tokens_details"]["cached_tokens"] >= b1["usage"]["prompt_tokens"] - 16
    msgs = http.get(f"/v1/conversations/{c['id']}").json()["messages"]
    assert [m["role"] for m in msgs] == ["assistant", "user", "assistant", "user", "assistant"]
    assert msgs[2]["content"] == b1["choices"][0]["message"]["content"]


def test_list_pages_newest_first_and_delete(start_server):
    s = start_server("list", [])
    with s.client() as http:
        ids = [create(http, title=f"chat {i}")["id"] for i in range(5)]
        # Activity moves a conversation to the top.
        http.patch(f"/v1/conversations/{ids[1]}", json={"title": "renamed"}).raise_for_status()
        say(http, ids[1], "Hi!", max_tokens=2)
        page = http.get("/v1/conversations", params={"limit": 2}).json()
        assert [c["id"] for c in page["data"]] == [ids[1], ids[4]] and page["has_more"]
        assert page["data"][0]["title"] == "renamed", "a titled chat keeps its title"
        rest = http.get("/v1/conversations", params={"limit": 10, "after": page["next"]}).json()
        assert [c["id"] for c in rest["data"]] == [ids[3], ids[2], ids[0]]
        assert not rest["has_more"] and rest["next"] is None
        assert_openai_error(http.get("/v1/conversations", params={"limit": 0}), 400, param="limit")
        assert_openai_error(http.get("/v1/conversations", params={"after": "nope"}), 400, param="after")
        r = http.delete(f"/v1/conversations/{ids[2]}")
        assert r.status_code == 200 and r.json()["deleted"] is True
        assert_openai_error(http.get(f"/v1/conversations/{ids[2]}"), 404, "conversation_not_found")
        assert_openai_error(http.delete(f"/v1/conversations/{ids[2]}"), 404, "conversation_not_found")
        assert_openai_error(http.post(f"/v1/conversations/{ids[2]}/messages", json={"content": "x"}), 404)
        assert len(http.get("/v1/conversations").json()["data"]) == 4


def test_message_refuses_bad_input(http):
    c = create(http)
    url = f"/v1/conversations/{c['id']}/messages"
    assert_openai_error(http.post(url, json={"content": "  "}), 400, param="content")
    assert_openai_error(http.post(url, json={"content": "hi", "max_tokens": 0}), 400, param="max_tokens")
    assert_openai_error(http.post(url, json={"content": "hi", "temperature": 9}), 400, param="temperature")
    assert_openai_error(http.post(url, json={"text": "hi"}), 400)
    # Nothing was stored by refused requests.
    assert len(http.get(f"/v1/conversations/{c['id']}").json()["messages"]) == 1


def test_each_key_sees_only_its_own_conversations(start_server):
    s = start_server("owners", ["--api-key", "key-a", "--api-key", "key-b"], api_key="key-a")
    a = s.client()
    b = s.client(headers={"Authorization": "Bearer key-b"})
    with a, b:
        c = create(a)
        mine = create(b)
        cid = c["id"]
        assert_openai_error(b.get(f"/v1/conversations/{cid}"), 404, "conversation_not_found")
        assert_openai_error(b.post(f"/v1/conversations/{cid}/messages", json={"content": "hi"}), 404)
        assert_openai_error(b.patch(f"/v1/conversations/{cid}", json={"title": "x"}), 404)
        assert_openai_error(b.delete(f"/v1/conversations/{cid}"), 404)
        assert [x["id"] for x in b.get("/v1/conversations").json()["data"]] == [mine["id"]]
        assert [x["id"] for x in a.get("/v1/conversations").json()["data"]] == [cid]
        assert a.get(f"/v1/conversations/{cid}").status_code == 200
        with httpx.Client(base_url=s.url) as anon:
            assert_openai_error(anon.get("/v1/conversations"), 401)


def test_stop_marks_the_reply_cancelled_with_its_text(http):
    c = create(http)
    body = {"content": "Tell me a very long story about the sea.", "max_tokens": 400, "ignore_eos": True}
    with http.stream("POST", f"/v1/conversations/{c['id']}/messages", json=body) as r:
        assert r.status_code == 200
        seen, info = "", None
        for ev, data in sse_events(r):
            ch = json.loads(data)
            info = info or ch.get("conversation")
            seen += "".join(x["delta"].get("content") or "" for x in ch["choices"])
            if len(seen) > 20:
                break
    m = wait_status(http, c["id"], info["assistant_message_id"], "cancelled")
    assert m["status"] == "cancelled", m
    assert m["content"].startswith(seen), (m["content"], seen)
    # The conversation takes a new message at once.
    _, _, r = say(http, c["id"], "Shorter, please.", max_tokens=4)
    assert r.status_code == 200


def test_one_reply_at_a_time(http):
    c = create(http)
    url = f"/v1/conversations/{c['id']}/messages"
    body = {"content": "Count to one hundred.", "max_tokens": 200, "ignore_eos": True}
    with http.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        events = sse_events(r)  # kept: dropping the generator would close the stream
        next(events)
        assert_openai_error(http.post(url, json={"content": "hi", "max_tokens": 2}), 409, "conversation_busy")
        assert_openai_error(http.delete(f"/v1/conversations/{c['id']}"), 409, "conversation_busy")


def test_long_history_keeps_the_block_and_recent_turns(start_server):
    s = start_server("trim", ["--ctx-size", "1024"])
    with s.client() as http:
        c = create(http)
        long_msg = "Tell me about ships, sails, ropes, anchors and the open sea. " * 6
        omitted, prompts = [], []
        for i in range(8):
            r = http.post(f"/v1/conversations/{c['id']}/messages",
                          json={"content": f"{i}: {long_msg}", "max_tokens": 24, "stream": False})
            assert r.status_code == 200, r.text
            b = r.json()
            omitted.append(b["conversation"]["turns_omitted"])
            prompts.append(b["usage"]["prompt_tokens"])
            assert int(r.headers["x-troupe-turns-omitted"]) == omitted[-1]
            assert b["usage"]["prompt_tokens"] + 24 <= 1024
        assert omitted[0] == 0 and omitted[-1] > 0, omitted
        assert omitted == sorted(omitted), omitted
        # The persona block stays: the prompt still starts with the block's tokens,
        # and the whole history is still stored.
        assert len(http.get(f"/v1/conversations/{c['id']}").json()["messages"]) == 1 + 2 * 8
        r = http.post(f"/v1/conversations/{c['id']}/messages",
                      json={"content": "x " * 2000, "max_tokens": 24})
        assert_openai_error(r, 400, "context_length_exceeded")


def test_persona_block_is_pinned(start_server):
    s = start_server("pin", [])
    with s.client() as http:
        m0 = s.metrics()
        assert m0["troupe_pinned_prefixes"] == 0
        c = create(http)
        say(http, c["id"], "Hello there!", max_tokens=2)
        m = s.metrics()
        assert m["troupe_pinned_prefixes"] == 1, m
        assert m['troupe_kv_blocks{state="pinned"}'] > 20, m
        assert_kv_gauges_add_up(m)
        # A second conversation with the persona reads the whole block from the cache.
        c2 = create(http)
        r = http.post(f"/v1/conversations/{c2['id']}/messages",
                      json={"content": "Something else entirely.", "max_tokens": 2, "stream": False})
        cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached >= m['troupe_kv_blocks{state="pinned"}'] * 16, (cached, m)
        assert s.metrics()["troupe_pinned_prefixes"] == 1


def test_kill_9_mid_reply_loses_no_committed_turn(tmp_path, logdir):
    db = tmp_path / "conv.db"
    flags = ["--db", str(db)]
    s = Server(logdir, "kill9-a", flags).start()
    try:
        with s.client() as http:
            c = create(http)
            done_text, _, _ = say(http, c["id"], "Say hi.", max_tokens=6)
            body = {"content": "Tell me a very long story.", "max_tokens": 800, "ignore_eos": True}
            with http.stream("POST", f"/v1/conversations/{c['id']}/messages", json=body) as r:
                seen = ""
                t0 = time.monotonic()
                for ev, data in sse_events(r):
                    ch = json.loads(data)
                    seen += "".join(x["delta"].get("content") or "" for x in ch["choices"])
                    # Past a progress write (every 0.5 s), then the process dies.
                    if time.monotonic() - t0 > 1.5 and seen:
                        s.signal(signal.SIGKILL)
                        break
        s.wait(10)
    finally:
        s.kill()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    s2 = Server(logdir, "kill9-b", flags).start()
    try:
        with s2.client() as http:
            msgs = http.get(f"/v1/conversations/{c['id']}").json()["messages"]
            assert [m["role"] for m in msgs] == ["assistant", "user", "assistant", "user", "assistant"]
            assert msgs[2]["content"] == done_text and msgs[2]["status"] == "done"
            assert (msgs[3]["content"], msgs[3]["status"]) == ("Tell me a very long story.", "done")
            assert msgs[4]["status"] == "interrupted"
            # Both the saved text and what the client saw are prefixes of the reply.
            saved = msgs[4]["content"]
            assert saved and (seen.startswith(saved) or saved.startswith(seen)), (saved, seen)
            # The conversation goes on after the restart.
            _, _, r = say(http, c["id"], "Go on.", max_tokens=4)
            assert r.status_code == 200
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        s2.kill()


def test_stop_from_another_client(http, server):
    c = create(http)
    url = f"/v1/conversations/{c['id']}/messages"
    body = {"content": "Tell me a long story.", "max_tokens": 400, "ignore_eos": True}
    with http.stream("POST", url, json=body) as r, server.client() as other:
        events = sse_events(r)
        info = json.loads(next(events)[1])["conversation"]
        before = ""
        while len(before) < 10:
            before += json.loads(next(events)[1])["choices"][0]["delta"].get("content") or ""
        stopped = other.post(f"/v1/conversations/{c['id']}/stop")
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["stopped"] is True
        # Returned once stored: the reply is already final.
        last = stopped.json()["messages"][-1]
        assert (last["id"], last["status"]) == (info["assistant_message_id"], "cancelled")
        rest = list(events)
    assert rest[-1] == ("message", "[DONE]")
    final = json.loads(rest[-2][1])
    assert final["choices"][0]["finish_reason"] == "stop" and final["conversation"]["status"] == "cancelled"
    streamed = before + "".join(json.loads(d)["choices"][0]["delta"].get("content") or ""
                       for _, d in rest[:-2] if json.loads(d)["choices"])
    assert streamed and last["content"] == streamed, "everything generated before the stop was sent and kept"
    again = http.post(f"/v1/conversations/{c['id']}/stop")
    assert again.status_code == 200 and again.json()["stopped"] is False
    assert_openai_error(http.post("/v1/conversations/conv_nope/stop"), 404, "conversation_not_found")


def test_reply_length_is_bounded_by_default(http):
    c = create(http)
    r = http.post(f"/v1/conversations/{c['id']}/messages",
                  json={"content": "Talk forever.", "ignore_eos": True, "stream": False})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 512
    assert r.json()["choices"][0]["finish_reason"] == "length"
