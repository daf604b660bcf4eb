// The web chat's controller: routing (`#/` the gallery, `#/c/<id>` a
// conversation), the conversation list, sending and stopping replies.

import { ApiError, onKeyNeeded, request, saveKey, savedKey, sendMessage } from "./api.js";
import {
  chatHead, convItem, convTitle, el, messageView, note, personaCard,
} from "./views.js";

const $ = (id) => document.getElementById(id);
const PAGE = 50;
// A 409 right after Stop is the server still closing the stopped reply.
const BUSY_RETRY_AFTER_STOP_MS = 5000;
const POLL_MS = 1500;
const POLL_FOR_MS = 120000;

const state = {
  personas: new Map(), // id -> persona
  convs: [], // list rows, newest first
  next: null,
  conv: null, // the open conversation, with messages
  // convId -> {ctl, userId, assistantId, nodes}: replies this page streams
  streams: new Map(),
  stoppedAt: new Map(), // convId -> time of the last Stop
  poll: null,
  pollFor: { id: null, until: 0 },
  personasError: null,
  openSeq: 0,
};

/** Sampling options from the page's query string, e.g. `/?max_tokens=64`
 * (handy for tests and slow machines); none by default. */
function replyOptions() {
  const q = new URLSearchParams(location.search);
  const out = {};
  for (const k of ["max_tokens", "seed"]) {
    const v = parseInt(q.get(k), 10);
    if (Number.isFinite(v)) out[k] = v;
  }
  const t = parseFloat(q.get("temperature"));
  if (Number.isFinite(t)) out.temperature = t;
  if (["1", "true"].includes(q.get("ignore_eos"))) out.ignore_eos = true;
  return out;
}

// ---- errors ---------------------------------------------------------

function showError(e) {
  if (e?.name === "AbortError") return;
  const text = e instanceof ApiError ? e.message : `Something went wrong: ${e?.message || e}`;
  $("banner-text").textContent = text;
  $("banner").hidden = false;
}

function clearError() {
  $("banner").hidden = true;
}

// ---- dialogs ----------------------------------------------------------

function askKey(refused) {
  const dialog = $("key-dialog");
  $("key-why").textContent = refused
    ? "The server refused that API key. Enter the right one."
    : "This server asks for an API key.";
  $("key-input").value = "";
  return new Promise((resolve) => {
    const done = (key) => {
      form.removeEventListener("submit", submit);
      $("key-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", cancel);
      if (dialog.open) dialog.close();
      updateKeyButton();
      resolve(key);
    };
    const form = $("key-form");
    const submit = (ev) => {
      ev.preventDefault();
      const key = $("key-input").value.trim();
      if (key) done(key);
    };
    const cancel = (ev) => {
      ev?.preventDefault();
      done("");
    };
    form.addEventListener("submit", submit);
    $("key-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", cancel);
    dialog.showModal();
    $("key-input").focus();
  });
}

function confirmDelete(title) {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = `“${title}” and all its messages will be deleted. This cannot be undone.`;
  return new Promise((resolve) => {
    const done = (ok) => {
      $("confirm-form").removeEventListener("submit", yes);
      $("confirm-cancel").removeEventListener("click", no);
      dialog.removeEventListener("cancel", no);
      if (dialog.open) dialog.close();
      resolve(ok);
    };
    const yes = (ev) => {
      ev.preventDefault();
      done(true);
    };
    const no = (ev) => {
      ev?.preventDefault();
      done(false);
    };
    $("confirm-form").addEventListener("submit", yes);
    $("confirm-cancel").addEventListener("click", no);
    dialog.addEventListener("cancel", no);
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

function updateKeyButton() {
  $("forget-key").hidden = !savedKey();
}

// ---- drawer (phones) ----------------------------------------------------

function setDrawer(open) {
  $("app").classList.toggle("drawer-open", open);
  $("backdrop").hidden = !open;
  $("open-drawer").setAttribute("aria-expanded", String(open));
  if (open) $("new-chat").focus();
}

// ---- personas and the gallery ---------------------------------------------

async function loadPersonas() {
  $("gallery-status").textContent = "Loading personas…";
  try {
    const body = await request("GET", "/v1/personas");
    state.personas = new Map((body.data || []).map((p) => [p.id, p]));
    state.personasError = null;
  } catch (e) {
    state.personasError = e;
    showError(e);
  }
}

function renderGallery() {
  const q = $("persona-search").value.trim().toLowerCase();
  const all = [...state.personas.values()];
  const shown = all.filter((p) => !q || [p.name, p.tagline, p.description, p.id]
    .some((f) => String(f || "").toLowerCase().includes(q)));
  $("gallery").replaceChildren(...shown.map((p) => personaCard(p, startChat)));
  const status = $("gallery-status");
  if (state.personasError) {
    status.replaceChildren(`The personas could not be loaded: ${state.personasError.message} `,
      el("button", { class: "btn small", type: "button", onclick: retryPersonas }, "Try again"));
  } else {
    status.textContent = !all.length ? "No personas on this server."
      : shown.length ? "" : `No persona matches “${$("persona-search").value}”.`;
  }
}

async function retryPersonas() {
  clearError();
  await loadPersonas();
  renderGallery();
  refreshList();
}

async function startChat(persona) {
  clearError();
  try {
    const conv = await request("POST", "/v1/conversations", { persona: persona.id });
    state.conv = conv;
    location.hash = `#/c/${encodeURIComponent(conv.id)}`;
    refreshList();
  } catch (e) {
    showError(e);
  }
}

// ---- conversation list --------------------------------------------------------

async function refreshList() {
  try {
    const body = await request("GET", `/v1/conversations?limit=${PAGE}`);
    state.convs = body.data || [];
    state.next = body.has_more ? body.next : null;
    renderList();
  } catch (e) {
    showError(e);
  }
}

async function moreConvs() {
  if (!state.next) return;
  try {
    const body = await request("GET",
      `/v1/conversations?limit=${PAGE}&after=${encodeURIComponent(state.next)}`);
    const seen = new Set(state.convs.map((c) => c.id));
    state.convs.push(...(body.data || []).filter((c) => !seen.has(c.id)));
    state.next = body.has_more ? body.next : null;
    renderList();
  } catch (e) {
    showError(e);
  }
}

function renderList() {
  const current = state.conv?.id;
  $("conv-list").replaceChildren(...state.convs.map((c) =>
    convItem(c, state.personas.get(c.persona), c.id === current, deleteConv)));
  $("conv-empty").hidden = state.convs.length > 0;
  $("more-convs").hidden = !state.next;
}

async function deleteConv(c) {
  const title = convTitle(c, state.personas.get(c.persona));
  if (!(await confirmDelete(title))) return;
  clearError();
  try {
    await request("DELETE", `/v1/conversations/${encodeURIComponent(c.id)}`);
    state.convs = state.convs.filter((x) => x.id !== c.id);
    renderList();
    if (state.conv?.id === c.id) location.hash = "#/";
  } catch (e) {
    if (e.code === "conversation_busy") {
      showError(new ApiError("A reply is still being written in that conversation; stop it or wait, then delete."));
    } else showError(e);
  }
}

// ---- one conversation ------------------------------------------------------------

function showView(chat) {
  $("gallery-view").hidden = chat;
  $("chat-view").hidden = !chat;
  $("delete-chat").hidden = !chat;
}

function showGallery() {
  stopPolling();
  state.conv = null;
  showView(false);
  $("chat-head").replaceChildren(...chatHead(null, null));
  document.title = "Troupe";
  renderGallery();
  renderList();
}

async function openConversation(id) {
  stopPolling();
  showView(true);
  const seq = ++state.openSeq;
  let conv = state.conv?.id === id && state.conv.messages ? state.conv : null;
  if (!conv) {
    $("messages").replaceChildren(note("Loading…"));
    try {
      conv = await request("GET", `/v1/conversations/${encodeURIComponent(id)}`);
    } catch (e) {
      if (seq !== state.openSeq) return;
      $("messages").replaceChildren(note(e.status === 404
        ? "This conversation does not exist (any more)." : e.message, "error"));
      showError(e);
      return;
    }
  }
  if (seq !== state.openSeq) return;
  state.conv = conv;
  renderConversation();
  renderList();
  if (wide()) $("input").focus();
}

function personaOf(conv) {
  return conv?.persona ? state.personas.get(conv.persona) : null;
}

function renderConversation() {
  const conv = state.conv;
  const persona = personaOf(conv);
  $("chat-head").replaceChildren(...chatHead(persona, conv.persona || conv.model));
  document.title = `${persona?.name || conv.persona || "Chat"} · Troupe`;
  const live = state.streams.get(conv.id);
  const nodes = [];
  for (const m of conv.messages || []) {
    // A reply this page is still streaming keeps its live bubbles.
    if (live && (m.id === live.assistantId || m.id === live.userId)) continue;
    nodes.push(messageView(m, persona, conv.persona).node);
  }
  if (live) nodes.push(...live.nodes);
  if (!nodes.length) nodes.push(note("Say hello to start the conversation."));
  $("messages").replaceChildren(...nodes);
  scrollDown(true);
  updateComposer();
  if (!live && (conv.messages || []).some((m) => m.status === "streaming")) startPolling(conv.id);
}

/** A reply another tab or client is writing: re-read until it settles. */
function startPolling(id) {
  if (state.pollFor.id !== id) state.pollFor = { id, until: Date.now() + POLL_FOR_MS };
  const tick = async () => {
    if (state.conv?.id !== id || Date.now() > state.pollFor.until) return;
    try {
      const conv = await request("GET", `/v1/conversations/${encodeURIComponent(id)}`);
      if (state.conv?.id !== id || state.streams.has(id)) return;
      state.conv = conv;
      renderConversation();
      if (!conv.messages.some((m) => m.status === "streaming")) refreshList();
    } catch (e) {
      showError(e);
    }
  };
  state.poll = setTimeout(tick, POLL_MS);
}

function stopPolling() {
  clearTimeout(state.poll);
  state.poll = null;
}

function nearBottom() {
  const m = $("messages");
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollDown(force = false) {
  const m = $("messages");
  if (force || nearBottom()) m.scrollTop = m.scrollHeight;
}

function updateComposer() {
  const busy = Boolean(state.conv && state.streams.has(state.conv.id));
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  if (!busy && document.activeElement === $("stop")) $("input").focus();
}

function autoGrow() {
  const t = $("input");
  t.style.height = "auto";
  t.style.height = `${Math.min(t.scrollHeight, 200)}px`;
}

// Phones get no automatic focus (it would pop up the keyboard).
const wide = () => matchMedia("(min-width: 761px)").matches;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function send() {
  const conv = state.conv;
  const content = $("input").value.trimEnd();
  if (!conv || !content.trim() || state.streams.has(conv.id)) return;
  clearError();
  stopPolling();
  const persona = personaOf(conv);
  const userView = messageView({ role: "user", content, status: "done" }, persona, conv.persona);
  const reply = messageView({ role: "assistant", content: "", status: "streaming" }, persona, conv.persona);
  reply.node.setAttribute("aria-live", "polite");
  reply.node.setAttribute("aria-busy", "true");
  const placeholder = $("messages").querySelector(":scope > .note:only-child");
  placeholder?.remove();
  const live = { ctl: new AbortController(), userId: null, assistantId: null, nodes: [userView.node, reply.node] };
  state.streams.set(conv.id, live);
  $("messages").append(...live.nodes);
  $("input").value = "";
  autoGrow();
  updateComposer();
  scrollDown(true);

  let started = false;
  const run = () => sendMessage(conv.id, { content, ...replyOptions() }, {
    signal: live.ctl.signal,
    onResponse: (resp) => {
      started = true;
      const omitted = parseInt(resp.headers.get("x-troupe-turns-omitted") || "0", 10);
      if (omitted > 0) showOmitted(live, reply, omitted);
    },
    onInfo: (info) => {
      live.userId = info.user_message_id;
      live.assistantId = info.assistant_message_id;
      reply.node.dataset.id = info.assistant_message_id;
      userView.node.dataset.id = info.user_message_id;
    },
    onDelta: (text) => {
      const follow = nearBottom();
      reply.text.appendData(text);
      reply.body.classList.remove("empty");
      if (follow) scrollDown(true);
    },
  });
  try {
    let result;
    for (let attempt = 0; ; attempt++) {
      try {
        result = await run();
        break;
      } catch (e) {
        const stopped = state.stoppedAt.get(conv.id) || 0;
        if (e.code === "conversation_busy" && Date.now() - stopped < BUSY_RETRY_AFTER_STOP_MS && attempt < 10) {
          await sleep(300);
          continue;
        }
        throw e;
      }
    }
    reply.setStatus("done", result.finish === "length" ? "cut off at the length limit" : "");
  } catch (e) {
    if (e?.name === "AbortError") {
      reply.setStatus("cancelled");
    } else if (!started) {
      // Nothing was stored: take the message back so it can be resent.
      live.nodes.forEach((n) => n.remove());
      if (!$("input").value) $("input").value = content;
      autoGrow();
      showError(e.code === "conversation_busy"
        ? new ApiError("A reply is still being written in this conversation (maybe in another tab). Wait for it to finish, then send again.",
          { status: e.status, code: e.code })
        : e);
    } else {
      reply.setStatus("error", e.message);
    }
  } finally {
    reply.node.setAttribute("aria-busy", "false");
    state.streams.delete(conv.id);
    if (state.conv?.id === conv.id) updateComposer();
    reloadQuietly(conv.id);
    refreshList();
  }
}

function showOmitted(live, reply, n) {
  const text = n === 1
    ? "1 older turn was left out of the model's context (the chat is longer than it can read)."
    : `${n} older turns were left out of the model's context (the chat is longer than it can read).`;
  const node = note(text, "omitted");
  reply.node.before(node);
  live.nodes.splice(live.nodes.indexOf(reply.node), 0, node);
}

/** Re-reads the conversation after a reply, without redrawing the page
 * (the redraw happens when it is opened next). */
async function reloadQuietly(id) {
  try {
    const conv = await request("GET", `/v1/conversations/${encodeURIComponent(id)}`);
    if (state.conv?.id === id) state.conv.messages = conv.messages;
  } catch {
    // The next open shows the error.
  }
}

async function stop() {
  const conv = state.conv;
  const live = conv && state.streams.get(conv.id);
  if (!live) return;
  state.stoppedAt.set(conv.id, Date.now());
  live.ctl.abort();
  // The server also stops on the disconnect; asking it directly returns
  // once the stopped reply is stored, so the next message is not refused.
  try {
    await request("POST", `/v1/conversations/${encodeURIComponent(conv.id)}/stop`);
  } catch {
    // The disconnect stops it anyway.
  }
}

async function deleteCurrent() {
  if (state.conv) await deleteConv(state.conv);
}

// ---- routing and start ----------------------------------------------------------

function route() {
  setDrawer(false);
  clearError();
  const m = /^#\/c\/([^/?#]+)/.exec(location.hash);
  if (m) openConversation(decodeURIComponent(m[1]));
  else showGallery();
}

function bind() {
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    send();
  });
  // Enter sends, Shift+Enter breaks the line; touch keyboards have no
  // Shift, so there Enter breaks the line and the button sends.
  const touch = matchMedia("(pointer: coarse)").matches;
  $("input").enterKeyHint = touch ? "enter" : "send";
  $("input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && !touch) {
      ev.preventDefault();
      send();
    }
  });
  $("input").addEventListener("input", autoGrow);
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", () => {
    if (location.hash === "#/" || !location.hash) route();
    else location.hash = "#/";
    if (wide()) $("persona-search").focus();
  });
  $("delete-chat").addEventListener("click", deleteCurrent);
  $("more-convs").addEventListener("click", moreConvs);
  $("persona-search").addEventListener("input", renderGallery);
  $("banner-close").addEventListener("click", clearError);
  $("open-drawer").addEventListener("click", () => setDrawer(true));
  $("close-drawer").addEventListener("click", () => setDrawer(false));
  $("backdrop").addEventListener("click", () => setDrawer(false));
  // Picking the chat that is already open changes no hash: close here too.
  $("conv-list").addEventListener("click", (ev) => {
    if (ev.target.closest(".conv-link")) setDrawer(false);
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && $("app").classList.contains("drawer-open")) setDrawer(false);
  });
  $("forget-key").addEventListener("click", () => {
    saveKey("");
    location.reload(); // start over as a visitor without a key
  });
  window.addEventListener("hashchange", route);
}

async function main() {
  bind();
  onKeyNeeded(askKey);
  updateKeyButton();
  await loadPersonas();
  route();
  refreshList();
}

main();
