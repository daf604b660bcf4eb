"""Personas over the API: the built-in troupe, chat with `persona:<id>`,
custom personas (CRUD, persistence) and Character Card import/export."""

from __future__ import annotations

import base64
import json

import openai
import pytest

from helpers import MODEL

CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Marla",
        "description": "{{char}} is a gruff lighthouse keeper.",
        "personality": "gruff, kind",
        "scenario": "A stormy night.",
        "first_mes": "Shut the door, {{user}}.",
        "mes_example": "<START>\n{{user}}: Hi!\n{{char}}: Hmph. Hello.",
        "creator_notes": "Test card.",
        "system_prompt": "",
        "post_history_instructions": "",
        "alternate_greetings": [],
        "tags": ["sea"],
        "creator": "tests",
        "character_version": "1",
        "extensions": {"depth_prompt": {"depth": 4, "prompt": "x"}, "someapp_flag": True},
    },
}


def persona_body(pid: str, name: str = "Test Bot") -> dict:
    return {
        "id": pid, "name": name, "tagline": "A test persona.", "description": "For tests.",
        "color": "#123456", "personality": "Says beep.", "greeting": "Beep, {{user}}.",
        "rule": "Never claims to be a human being; never proposes meeting in person.",
        "examples": [{"user": "Hi", "char": "Beep."}],
        "sampling": {"temperature": 0.5},
    }


def test_builtin_troupe_is_listed(http):
    r = http.get("/v1/personas")
    assert r.status_code == 200
    data = r.json()["data"]
    builtin = [p for p in data if p["builtin"]]
    assert len(builtin) == 30
    for p in builtin:
        for k in ("id", "name", "tagline", "greeting", "description", "color"):
            assert p[k], (p["id"], k)
        assert p["model"] == "persona:" + p["id"]
    models = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert MODEL in models and all("persona:" + p["id"] in models for p in builtin)


def test_chat_with_persona_uses_its_block_and_shares_its_cache(client):
    msgs = [{"role": "user", "content": "What is your favourite food?"}]
    base = client.chat.completions.create(model=MODEL, messages=msgs, temperature=0, max_tokens=8)
    first = client.chat.completions.create(
        model="persona:unit-7", messages=msgs, temperature=0, max_tokens=8)
    assert first.model == "persona:unit-7"
    assert first.choices[0].message.content
    # The persona block (system text, examples, greeting) comes first.
    assert first.usage.prompt_tokens > base.usage.prompt_tokens + 200
    # A second conversation with the same persona reuses the block's KV.
    second = client.chat.completions.create(
        model="persona:unit-7", messages=[{"role": "user", "content": "Tell me a joke."}],
        temperature=0, max_tokens=8)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 16 - 20, (cached, first.usage.prompt_tokens)


def test_persona_chat_streams(client):
    stream = client.chat.completions.create(
        model="persona:captain-quill", messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=12, stream=True, seed=1)
    chunks = list(stream)
    assert all(c.model == "persona:captain-quill" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_unknown_persona_is_404(client, http):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="persona:nobody", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"
    r = http.get("/v1/personas/nobody")
    assert r.status_code == 404 and r.json()["error"]["code"] == "persona_not_found"


def test_custom_persona_crud(http):
    r = http.post("/v1/personas", json=persona_body("test-bot"))
    assert r.status_code == 201, r.text
    assert r.json()["builtin"] is False
    assert http.post("/v1/personas", json=persona_body("test-bot")).status_code == 409
    got = http.get("/v1/personas/test-bot").json()
    assert got["name"] == "Test Bot" and got["sampling"]["temperature"] == 0.5
    r = http.put("/v1/personas/test-bot", json=persona_body("test-bot", "Renamed Bot"))
    assert r.status_code == 200 and r.json()["name"] == "Renamed Bot"
    r = http.put("/v1/personas/test-bot", json=persona_body("other-id"))
    assert r.status_code == 400
    assert http.delete("/v1/personas/test-bot").json()["deleted"] is True
    assert http.get("/v1/personas/test-bot").status_code == 404


def test_builtins_are_read_only_and_bad_personas_rejected(http):
    assert http.delete("/v1/personas/unit-7").status_code == 403
    r = http.put("/v1/personas/unit-7", json=persona_body("unit-7"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "persona_read_only"
    for bad in [persona_body("Bad Id!"), {**persona_body("x1"), "name": ""},
                {**persona_body("x2"), "sampling": {"temperature": 9}},
                {**persona_body("x3"), "unknown_field": 1}]:
        r = http.post("/v1/personas", json=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["message"]
    r = http.post("/v1/personas", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_card_import_export_round_trip(http):
    r = http.post("/v1/personas", json=CARD)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    assert pid.startswith("marla")
    card = http.get(f"/v1/personas/{pid}", params={"format": "card"}).json()
    assert card["spec"] == "chara_card_v3"
    ext = card["data"]["extensions"]
    assert ext["depth_prompt"] == {"depth": 4, "prompt": "x"} and ext["someapp_flag"] is True
    v2 = http.get(f"/v1/personas/{pid}", params={"format": "card_v2"}).json()
    assert v2["spec"] == "chara_card_v2" and v2["data"]["tags"] == ["sea"]
    png = http.get(f"/v1/personas/{pid}", params={"format": "png"})
    assert png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    # The PNG imports again (a new id, the name being taken).
    r = http.post("/v1/personas", content=png.content, headers={"content-type": "image/png"})
    assert r.status_code == 201, r.text
    again = r.json()
    assert again["id"] != pid and again["name"] == "Marla"
    assert again["card"]["extensions"]["someapp_flag"] is True
    bad = http.post("/v1/personas", content=b"\x89PNG\r\n\x1a\nxx", headers={"content-type": "image/png"})
    assert bad.status_code == 400
    for p in (pid, again["id"]):
        http.delete(f"/v1/personas/{p}")


def test_custom_personas_survive_a_restart(start_server, tmp_path):
    flags = ["--personas-dir", str(tmp_path)]
    s = start_server("a", flags)
    with s.client() as c:
        assert c.post("/v1/personas", json=persona_body("keeper")).status_code == 201
    s.kill()
    s2 = start_server("b", flags)
    with s2.client() as c:
        assert c.get("/v1/personas/keeper").json()["name"] == "Test Bot"
    assert (tmp_path / "keeper.toml").exists()
