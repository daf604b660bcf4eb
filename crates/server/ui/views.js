// DOM building blocks of the web chat. Every string from the server (model
// output, persona fields, titles) goes in through text nodes, never as
// markup: `el` only makes elements, attributes and text nodes.

const SVG_NS = "http://www.w3.org/2000/svg";

/** `el("p", {class: "x", title: "y"}, "text", child)`: an element. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/** A small line icon (paths drawn in a 24×24 box). */
export function icon(d) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(SVG_NS, "path");
  path.setAttribute("d", d);
  svg.append(path);
  return svg;
}

export const ICON_DELETE = "M5 7h14M10 7V4h4v3M7 7l1 13h8l1-13";

/** `{{char}}` and `{{user}}` as the server fills them in a greeting. */
export function fillNames(text, persona) {
  return String(text || "")
    .replaceAll("{{char}}", persona?.name || "")
    .replaceAll("{{user}}", "User");
}

function hashHue(s) {
  let h = 2166136261;
  for (const ch of String(s)) h = Math.imul(h ^ ch.codePointAt(0), 16777619);
  return (h >>> 0) % 360;
}

/** The persona's `color` (`#rrggbb`), or one derived from its id. */
export function personaColor(persona, id) {
  const c = persona?.color;
  if (typeof c === "string" && /^#[0-9a-f]{6}$/i.test(c)) return c;
  return `hsl(${hashHue(persona?.id || id || "?")} 45% 42%)`;
}

/** Black or white, whichever reads better on `color`. */
function inkOn(color) {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(color);
  if (!m) return "#fff"; // the hashed hsl colours are all dark enough
  const [r, g, b] = m.slice(1).map((x) => parseInt(x, 16) / 255)
    .map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
  const lum = 0.2126 * r + 0.7152 * g + 0.0722 * b;
  return lum > 0.35 ? "#111" : "#fff";
}

export function initials(name) {
  const words = String(name || "?").split(/[\s_-]+/)
    .map((w) => w.replace(/[^\p{L}\p{N}]/gu, "")).filter(Boolean);
  if (!words.length) return "?";
  const first = [...words[0]][0];
  const last = words.length > 1 ? [...words[words.length - 1]][0] : "";
  return (first + last).toUpperCase();
}

/** A monogram: initials on the persona's colour. */
export function avatar(persona, id, size = "") {
  const bg = personaColor(persona, id);
  const node = el("span", { class: `avatar ${size}`.trim(), "aria-hidden": "true" },
    initials(persona?.name || id));
  node.style.backgroundColor = bg; // CSSOM, allowed by the CSP
  node.style.color = inkOn(bg);
  return node;
}

/** A gallery card: a button that starts a chat. */
export function personaCard(persona, onPick) {
  const button = el("button", {
    class: "card",
    type: "button",
    title: `Start a chat with ${persona.name}`,
    dataset: { persona: persona.id },
    onclick: () => onPick(persona),
  },
  avatar(persona, persona.id, "large"),
  el("span", { class: "card-body" },
    el("span", { class: "card-name" }, persona.name,
      persona.builtin === false ? el("span", { class: "badge" }, "custom") : null),
    el("span", { class: "card-tagline" }, persona.tagline || persona.description || ""),
    persona.greeting ? el("span", { class: "card-greeting" }, fillNames(persona.greeting, persona)) : null));
  return el("li", {}, button);
}

const STATUS_LABEL = {
  streaming: "writing…",
  cancelled: "stopped",
  error: "failed",
  interrupted: "interrupted (the server stopped)",
};

/**
 * One message bubble. Returns `{node, text, setStatus}`; `text` is the
 * Text node tokens are appended to.
 */
export function messageView(m, persona, personaId) {
  const mine = m.role === "user";
  const text = document.createTextNode(m.content || "");
  const body = el("div", { class: "msg-text" }, text);
  const status = el("div", { class: "msg-status small" });
  const node = el("article", {
    class: `msg ${mine ? "user" : "assistant"}`,
    dataset: { role: m.role, id: m.id ?? "" },
    "aria-label": mine ? "You" : (persona?.name || personaId || "Assistant"),
  },
  mine ? null : avatar(persona, personaId, "small"),
  el("div", { class: "bubble" },
    el("div", { class: "msg-who small" }, mine ? "You" : (persona?.name || personaId || "Assistant")),
    body, status));
  const setStatus = (s, detail = "") => {
    node.dataset.status = s;
    status.replaceChildren();
    const label = STATUS_LABEL[s];
    if (label) status.append(el("span", { class: `status status-${s}` }, label));
    if (detail) status.append(el("span", { class: "status-detail" }, detail));
    body.classList.toggle("empty", !text.data && s !== "streaming");
  };
  setStatus(m.status || "done", m.status === "error" ? (m.error || "") : "");
  return { node, text, body, setStatus };
}

/** A small line between messages (context notes, errors). */
export function note(text, kind = "") {
  return el("p", { class: `note ${kind}`.trim(), role: kind === "error" ? "alert" : null }, text);
}

export function relativeTime(ms) {
  if (!ms) return "";
  const s = (Date.now() - ms) / 1000;
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ms).toLocaleDateString(undefined, { month: "short", day: "numeric", year: "numeric" });
}

/** The title to show for a conversation. */
export function convTitle(c, persona) {
  return c.title || `New chat with ${persona?.name || c.persona || "the model"}`;
}

/** One row of the conversation list: a link and a delete button. */
export function convItem(c, persona, current, onDelete) {
  const title = convTitle(c, persona);
  return el("li", { class: "conv", dataset: { id: c.id } },
    el("a", {
      class: "conv-link",
      href: `#/c/${encodeURIComponent(c.id)}`,
      "aria-current": current ? "page" : null,
    },
    avatar(persona, c.persona || "model", "small"),
    el("span", { class: "conv-text" },
      el("span", { class: "conv-title" }, title),
      el("span", { class: "conv-meta small" },
        `${persona?.name || c.persona || "Model"} · ${relativeTime(c.updated_at)}`))),
    el("button", {
      class: "icon-btn conv-delete",
      type: "button",
      title: `Delete “${title}”`,
      "aria-label": `Delete “${title}”`,
      onclick: () => onDelete(c),
    }, icon(ICON_DELETE)));
}

/** The chat's header: who you talk to. */
export function chatHead(persona, personaId) {
  if (!personaId) return [el("span", { class: "head-title" }, "Troupe")];
  return [
    avatar(persona, personaId, "small"),
    el("span", { class: "head-text" },
      el("span", { class: "head-title" }, persona?.name || personaId),
      persona?.tagline ? el("span", { class: "head-tagline small" }, persona.tagline) : null),
  ];
}
