"""The web chat at `/`, driven in headless Chromium (Debian's
/usr/bin/chromium through Playwright): the gallery, a streamed reply, the
history after a reload, markup shown as text, Stop, the conversation list,
a phone-sized screen and the API key form.

Replies are kept short through the page's query string (`?max_tokens=`,
`ignore_eos=1` for a known length), which the UI passes to the server.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from helpers import Server, SSEStream, chat_body

CHROMIUM = Path(os.environ.get("TROUPE_CHROMIUM", "/usr/bin/chromium"))
# Without the networking flags Chromium keeps calling home, which here
# only hits a closed network.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
UI_TIMEOUT_MS = 30_000
KEY = "ui-test-key"
PERSONA = "captain-quill"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}
# Smallest touch target the UI promises on phones, in CSS px.
MIN_TAP_PX = 40
SHORT = "?max_tokens=8"


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.exists(), (
        f"Chromium not found at {CHROMIUM}: `apt-get install chromium` "
        "(scripts/test.sh does it under CI=true) or set TROUPE_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def ui_server(logdir):
    s = Server(logdir, "web-ui", []).start()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def key_server(logdir):
    s = Server(logdir, "web-ui-key", ["--api-key", KEY], api_key=KEY).start()
    yield s
    s.kill()


def new_page(browser, viewport=DESKTOP, **kw):
    ctx = browser.new_context(viewport=viewport, **kw)
    page = ctx.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.problems = []
    # Script errors and CSP refusals (an inline script or style that the
    # policy blocks) show up here; failed API calls are the tests' business.
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("console", lambda m: page.problems.append(m.text)
            if m.type == "error" and "Content Security Policy" in m.text else None)
    return page


@pytest.fixture
def page(browser):
    p = new_page(browser)
    yield p
    problems = list(p.problems)
    p.context.close()
    assert not problems, problems


def open_ui(page, server: Server, query: str = "") -> None:
    page.goto(server.url + "/" + query)
    page.wait_for_selector("#gallery .card")


def start_chat(page, persona: str = PERSONA) -> str:
    page.click(f".card[data-persona='{persona}']")
    page.wait_for_url(lambda u: "#/c/conv_" in u)
    page.wait_for_selector("#messages .msg")
    return page.url.split("#/c/", 1)[1]


def send(page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def wait_reply_done(page, n_streamed: int = 1):
    """The `n`-th reply this page streamed, once it has ended."""
    sel = "#messages .msg.assistant[aria-busy='false']"
    # Functions, not expressions: the page's CSP forbids eval'ing strings.
    page.wait_for_function(f"() => document.querySelectorAll(\"{sel}\").length >= {n_streamed}")
    return page.locator(sel).nth(n_streamed - 1)


def bubbles(page) -> list[tuple[str, str]]:
    return [(m.get_attribute("data-role"), m.locator(".msg-text").text_content())
            for m in page.locator("#messages .msg").all()]


def record_reply_lengths(page) -> None:
    """Logs (time, length) of the streaming reply's text at every DOM change."""
    page.evaluate("""() => {
        window.__lens = [];
        const box = document.getElementById('messages');
        new MutationObserver(() => {
            const r = [...box.querySelectorAll('.msg.assistant')].pop();
            if (r) window.__lens.push([performance.now(), r.querySelector('.msg-text').textContent.length]);
        }).observe(box, {subtree: true, childList: true, characterData: true});
    }""")


def no_horizontal_scroll(page) -> None:
    widths = page.evaluate("""() => [document.scrollingElement, ...document.querySelectorAll(
        '.messages, .gallery-view, .composer, .topbar')].filter(e => e && e.offsetParent !== null
        || e === document.scrollingElement).map(e => [e.className || 'document', e.scrollWidth, e.clientWidth])""")
    for name, scroll, client in widths:
        assert scroll <= client, f"{name} scrolls sideways: {scroll} > {client}"


def stored(server: Server, cid: str) -> dict:
    r = httpx.get(f"{server.url}/v1/conversations/{cid}", headers=server.auth_headers(), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_gallery_stream_and_history_after_reload(page, ui_server):
    personas = httpx.get(ui_server.url + "/v1/personas", timeout=30).json()["data"]
    builtin = {p["id"]: p for p in personas if p["builtin"]}
    assert len(builtin) == 30
    open_ui(page, ui_server, "?max_tokens=16&ignore_eos=1")
    cards = page.locator("#gallery .card")
    assert cards.count() == len(personas)
    assert {c.get_attribute("data-persona") for c in cards.all()} >= set(builtin)
    quill = builtin[PERSONA]
    card = page.locator(f".card[data-persona='{PERSONA}']")
    assert card.locator(".card-name").text_content() == quill["name"]
    assert card.locator(".card-tagline").text_content() == quill["tagline"]
    assert card.locator(".card-greeting").text_content() == quill["greeting"]
    mono = card.locator(".avatar")
    assert mono.text_content() == "CQ"
    r, g, b = (int(quill["color"][i:i + 2], 16) for i in (1, 3, 5))
    assert mono.evaluate("e => getComputedStyle(e).backgroundColor") == f"rgb({r}, {g}, {b})"

    cid = start_chat(page)
    assert bubbles(page) == [("assistant", quill["greeting"].replace("{{user}}", "User"))]
    record_reply_lengths(page)
    send(page, "Tell me a story about the sea.")
    assert page.locator("#stop").is_visible(), "Stop shows while the reply streams"
    reply = wait_reply_done(page)
    assert reply.get_attribute("data-status") == "done"
    text = reply.locator(".msg-text").text_content()
    assert text.strip(), "the reply has text"
    lens = page.evaluate("() => window.__lens")
    steps = sorted({n for _, n in lens if n > 0})
    assert len(steps) >= 3 and steps[0] < len(text), f"the reply should arrive in steps: {steps}"
    grew = [t for t, n in lens if n > 0]
    assert grew[-1] - grew[0] > 20, "the steps should be spread over time (ms)"
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()

    conv = stored(ui_server, cid)
    assert [(m["role"], m["status"]) for m in conv["messages"][1:]] == [("user", "done"), ("assistant", "done")]
    assert conv["messages"][2]["content"] == text
    item = page.locator(f"#conv-list .conv[data-id='{cid}']")
    item.wait_for()
    assert item.locator(".conv-title").text_content() == "Tell me a story about the sea."
    assert item.locator("a").get_attribute("aria-current") == "page"

    page.reload()
    page.wait_for_selector("#messages .msg >> nth=2")
    assert bubbles(page)[1:] == [("user", "Tell me a story about the sea."), ("assistant", text)]
    assert page.locator(".chat-head .head-title").text_content() == quill["name"]


def test_markup_is_shown_as_text(page, ui_server):
    evil = "<img src=x onerror=\"window.__pwned=1\"><b>bold</b>"
    body = {
        "id": "markup-test", "name": "<b>Evil</b> <img src=x onerror=window.__pwned=2>",
        "tagline": "<i>tag</i>", "description": "d", "color": "#123456", "personality": "Says beep.",
        "greeting": "<script>window.__pwned=3</script> hi", "examples": [{"user": "Hi", "char": "Beep."}],
        "rule": "Never claims to be a human being; never proposes meeting in person.",
    }
    r = httpx.post(ui_server.url + "/v1/personas", json=body, timeout=30)
    assert r.status_code == 201, r.text
    try:
        open_ui(page, ui_server, SHORT)
        card = page.locator(".card[data-persona='markup-test']")
        assert card.locator(".card-name").text_content().startswith(body["name"])
        assert card.locator(".card-tagline").text_content() == "<i>tag</i>"
        cid = start_chat(page, "markup-test")
        send(page, evil)
        wait_reply_done(page)
        assert bubbles(page)[:2] == [("assistant", body["greeting"]), ("user", evil)]
        assert page.locator(".chat-head .head-title").text_content() == body["name"]
        title = stored(ui_server, cid)["title"]  # the message's start
        assert title.startswith("<img src=x")
        page.locator(f"#conv-list .conv[data-id='{cid}'] .conv-title").filter(has_text=title).wait_for()
        for tag in ("img", "b", "i", "script"):
            assert page.locator(f"main {tag}, #sidebar .conv-list {tag}").count() == 0, tag
        assert page.evaluate("() => window.__pwned") is None
    finally:
        httpx.delete(ui_server.url + "/v1/personas/markup-test", timeout=30)


def test_stop_keeps_the_partial_reply(page, ui_server):
    open_ui(page, ui_server, "?max_tokens=1500&ignore_eos=1")
    cid = start_chat(page)
    send(page, "Tell me everything you know.")
    page.wait_for_function(
        "() => document.querySelector(\".msg[aria-busy='true'] .msg-text\")?.textContent.length > 20")
    page.click("#stop")
    reply = wait_reply_done(page)
    assert reply.get_attribute("data-status") == "cancelled"
    assert reply.locator(".status-cancelled").text_content() == "stopped"
    shown = reply.locator(".msg-text").text_content()
    assert len(shown) > 20
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    deadline = time.monotonic() + 20
    while (m := stored(ui_server, cid)["messages"][-1])["status"] == "streaming" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert m["status"] == "cancelled", m
    assert m["content"].startswith(shown), "the server keeps at least what was shown"
    assert len(m["content"]) < 2000, "generation stopped long before max_tokens"
    page.reload()
    page.wait_for_selector("#messages .msg[data-status='cancelled'] .status-cancelled")


def test_list_new_chat_and_delete(page, ui_server):
    open_ui(page, ui_server, SHORT)
    first = start_chat(page, "dr-volt")
    page.click("#new-chat")
    page.wait_for_selector("#gallery-view:not([hidden]) .card")
    second = start_chat(page, "granny-mae")
    ids = [e.get_attribute("data-id") for e in page.locator("#conv-list .conv").all()]
    assert ids.index(second) < ids.index(first), "newest first"
    page.click(f"#conv-list .conv[data-id='{first}'] a")
    page.wait_for_url(lambda u: u.endswith(f"#/c/{first}"))
    page.wait_for_selector(".chat-head .head-title:text-is('Dr. Volt')")

    page.click("#delete-chat")
    page.click("#confirm-cancel")
    assert page.locator(f"#conv-list .conv[data-id='{first}']").count() == 1
    page.click("#delete-chat")
    assert "Dr. Volt" in page.locator("#confirm-text").text_content()
    page.click("#confirm-ok")
    page.wait_for_selector("#gallery-view:not([hidden])")
    page.wait_for_selector(f"#conv-list .conv[data-id='{first}']", state="detached")
    r = httpx.get(f"{ui_server.url}/v1/conversations/{first}", timeout=30)
    assert r.status_code == 404

    page.goto(f"{ui_server.url}/#/c/{first}")
    page.wait_for_selector("#messages .note.error:has-text('does not exist')")


def test_phone_screen(browser, ui_server):
    page = new_page(browser, PHONE, is_mobile=True, has_touch=True)
    try:
        open_ui(page, ui_server, SHORT)
        assert page.locator("#gallery .card").first.is_visible()
        assert not page.locator("#sidebar").is_visible(), "the list is a closed drawer"
        no_horizontal_scroll(page)
        page.tap(f".card[data-persona='{PERSONA}']")
        page.wait_for_selector("#messages .msg")
        # One long word must wrap, not widen the page; on touch screens
        # Enter breaks the line and the button sends.
        page.fill("#input", "x" * 300)
        page.press("#input", "Enter")
        assert page.input_value("#input") == "x" * 300 + "\n"
        page.tap("#send")
        wait_reply_done(page)
        no_horizontal_scroll(page)
        box = page.locator("#composer").bounding_box()
        assert abs(box["y"] + box["height"] - PHONE["height"]) <= 1, f"composer not at the bottom: {box}"
        page.tap("#open-drawer")
        page.wait_for_selector("#sidebar .conv")
        small = page.evaluate(f"""() => [...document.querySelectorAll(
            'button, .conv-link, .card, textarea, input')].filter(e => e.checkVisibility())
            .map(e => [e.id || e.className, e.getBoundingClientRect()])
            .filter(([, r]) => r.width < {MIN_TAP_PX} || r.height < {MIN_TAP_PX})
            .map(([n, r]) => `${{n}} ${{r.width}}x${{r.height}}`)""")
        assert not small, f"touch targets under {MIN_TAP_PX} px: {small}"
        page.tap("#sidebar .conv-link")
        page.wait_for_selector("#sidebar", state="hidden")
        assert page.locator("#input").is_visible()
        assert not page.problems, page.problems
    finally:
        page.context.close()


def test_api_key_is_asked_for_and_kept(page, key_server):
    r = httpx.get(key_server.url + "/", timeout=30)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"], "the page needs no key"
    assert httpx.get(key_server.url + "/v1/personas", timeout=30).status_code == 401
    page.goto(key_server.url + "/" + SHORT)
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", "wrong-key")
    page.click("#key-submit")
    page.wait_for_selector("#key-dialog[open] #key-why:has-text('refused')")
    page.fill("#key-input", KEY)
    page.click("#key-submit")
    page.wait_for_selector("#gallery .card")
    assert page.locator("#gallery .card").count() == 30
    assert page.evaluate("() => localStorage.getItem('troupe.apiKey')") == KEY
    cid = start_chat(page)
    send(page, "Hello!")
    assert wait_reply_done(page).get_attribute("data-status") == "done"
    page.reload()
    page.wait_for_selector("#messages .msg >> nth=2")
    assert not page.locator("#key-dialog").is_visible()
    assert len(stored(key_server, cid)["messages"]) == 3


def test_static_files_headers(ui_server):
    for path, kind in (("/", "text/html"), ("/ui/app.js", "text/javascript"),
                       ("/ui/api.js", "text/javascript"), ("/ui/views.js", "text/javascript"),
                       ("/ui/app.css", "text/css"), ("/ui/icon.svg", "image/svg+xml")):
        r = httpx.get(ui_server.url + path, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), (path, r.headers)
        assert r.headers["cache-control"] == "no-cache"
        assert "default-src 'self'" in r.headers["content-security-policy"]
        again = httpx.get(ui_server.url + path, headers={"if-none-match": r.headers["etag"]}, timeout=30)
        assert again.status_code == 304 and not again.content


def test_turns_left_out_are_noted(browser, start_server):
    # A context of 384 holds the small persona block and about two turns.
    s = start_server("small-ctx", ["-c", "384"])
    with s.client() as http:
        body = {"id": "beeper", "name": "Beeper", "tagline": "t", "description": "d", "color": "#225588",
                "personality": "Says beep.", "greeting": "Beep.", "examples": [{"user": "Hi", "char": "Beep."}],
                "rule": "Never claims to be a human being; never proposes meeting in person."}
        assert http.post("/v1/personas", json=body).status_code == 201
        cid = http.post("/v1/conversations", json={"persona": "beeper"}).json()["id"]
        long = " ".join(["sea"] * 120)
        for _ in range(2):
            r = http.post(f"/v1/conversations/{cid}/messages",
                          json={"content": long, "max_tokens": 2, "stream": False})
            assert r.status_code == 200, r.text
    page = new_page(browser)
    try:
        page.goto(f"{s.url}/{SHORT}#/c/{cid}")
        page.wait_for_selector("#messages .msg >> nth=4")
        send(page, long)
        wait_reply_done(page)
        note = page.locator("#messages .note.omitted")
        assert "left out of the model's context" in note.text_content()
    finally:
        page.context.close()


def test_page_still_loads_while_draining(browser, start_server):
    """After SIGTERM the static files are still served, and the page shows
    the API's 503 message rather than failing to load."""
    s = start_server("drain", ["--drain-timeout", "20"])
    st = SSEStream(s, "/v1/chat/completions", chat_body("Write a long story.", max_tokens=2000, stream=True))
    page = new_page(browser)
    try:
        assert st.status == 200 and st.next_event()
        s.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while httpx.get(s.url + "/ready", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "not draining"
            time.sleep(0.05)
        for path in ("/", "/ui/app.js"):
            assert httpx.get(s.url + path, timeout=10).status_code == 200, path
        page.goto(s.url + "/")
        page.wait_for_selector("#gallery-status:has-text('shutting down')")
        assert not page.problems, page.problems
    finally:
        page.context.close()
        st.close()  # the last request gone, the server exits
    assert s.wait(timeout=20) == 0
