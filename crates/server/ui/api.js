// The HTTP side of the web chat: requests with the saved API key, errors
// with the server's own message, and the reply stream (Server-Sent Events
// over a POST, which EventSource cannot do, so parsed from fetch's body).

const KEY_STORE = "troupe.apiKey";

/** An error to show the user: `message` is ready to display. */
export class ApiError extends Error {
  constructor(message, { status = 0, code = null, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

export function savedKey() {
  try {
    return localStorage.getItem(KEY_STORE) || "";
  } catch {
    return "";
  }
}

export function saveKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORE, key);
    else localStorage.removeItem(KEY_STORE);
  } catch {
    // Private mode without storage: the key lasts for this page only.
  }
  memoryKey = key;
}

let memoryKey = savedKey();

// Asks the user for a key; set by the app. Returns the key, or "" when the
// user declines. One prompt is shared by every request that got a 401.
let askForKey = async () => "";
let pendingAsk = null;

export function onKeyNeeded(fn) {
  askForKey = fn;
}

function newKey(refused) {
  if (!pendingAsk) {
    pendingAsk = Promise.resolve(askForKey(refused)).finally(() => {
      pendingAsk = null;
    });
  }
  return pendingAsk;
}

/** The error of a non-2xx response, with the server's `error.message`. */
async function errorOf(resp) {
  let message = "", code = null;
  try {
    const body = await resp.json();
    message = body?.error?.message || "";
    code = body?.error?.code || null;
  } catch {
    // Not JSON (a proxy's page?): fall back to the status line.
  }
  if (!message) message = `The server answered ${resp.status} ${resp.statusText || ""}`.trim() + ".";
  return new ApiError(message, { status: resp.status, code });
}

/**
 * A request to the API. JSON in and out; with `stream: true` the raw
 * Response of a 2xx is returned for the caller to read. A 401 asks for a
 * key and retries; other failures throw ApiError.
 */
export async function request(method, path, body, { signal, stream = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = { Accept: stream ? "text/event-stream" : "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (memoryKey) headers.Authorization = `Bearer ${memoryKey}`;
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
      });
    } catch (e) {
      if (e?.name === "AbortError") throw e;
      throw new ApiError("Could not reach the server (network error). Is troupe serve still running?",
        { cause: e });
    }
    if (resp.status === 401 && attempt < 5) {
      const key = await newKey(Boolean(memoryKey));
      if (!key) throw await errorOf(resp);
      saveKey(key);
      continue;
    }
    if (!resp.ok) throw await errorOf(resp);
    if (stream) return resp;
    if (resp.status === 204) return null;
    try {
      return await resp.json();
    } catch (e) {
      throw new ApiError("The server sent a reply that is not JSON.", { status: resp.status, cause: e });
    }
  }
}

/** Server-Sent Events of a response body: `{event, data}` objects. */
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "event") event = value;
          else if (field === "data") data.push(value);
        }
        if (data.length) yield { event, data: data.join("\n") };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * Posts a message and reads the streamed reply: `onInfo(conversation)`
 * with the first chunk, `onDelta(text)` per piece of text. Resolves to
 * `{finish, usage}`; throws ApiError (also for an `event: error` mid-way,
 * with `.midStream = true`) or AbortError when `signal` fires.
 */
export async function sendMessage(convId, body, { signal, onResponse, onInfo, onDelta }) {
  const path = `/v1/conversations/${encodeURIComponent(convId)}/messages`;
  const resp = await request("POST", path, { ...body, stream: true }, { signal, stream: true });
  onResponse?.(resp);
  let finish = null, usage = null;
  for await (const ev of sseEvents(resp.body)) {
    if (ev.event === "error") {
      let message = "The reply failed.";
      try {
        message = JSON.parse(ev.data)?.error?.message || message;
      } catch {
        // Keep the generic message.
      }
      const e = new ApiError(message, { status: 500 });
      e.midStream = true;
      throw e;
    }
    if (ev.data === "[DONE]") return { finish, usage };
    let chunk;
    try {
      chunk = JSON.parse(ev.data);
    } catch {
      continue;
    }
    if (chunk.conversation) onInfo?.(chunk.conversation);
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices || []) {
      const text = choice.delta?.content;
      if (text) onDelta(text);
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  const e = new ApiError("The connection closed before the reply was complete.");
  e.midStream = true;
  throw e;
}
