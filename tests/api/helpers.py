"""Shared pieces of the API tests: starting `troupe serve`, raw HTTP and SSE,
OpenAI error-shape checks and Prometheus parsing."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m"
BIN = Path(os.environ.get("TROUPE_BIN") or REPO / "target" / "debug" / "troupe")
STARTUP_TIMEOUT = 60.0
# Generous per-request limit: the machine is small and shared.
REQUEST_TIMEOUT = 120.0

# Every server started and not yet stopped, so a failing test can show logs.
LIVE: list["Server"] = []


def data_args() -> list[str]:
    d = os.environ.get("TROUPE_DATA")
    return ["--data-dir", d] if d else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `troupe serve` subprocess on a free loopback port."""

    def __init__(self, log_dir: Path, name: str, flags: list[str], api_key: str | None = None):
        self.name = name
        self.flags = list(flags)
        self.api_key = api_key
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.host = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self) -> "Server":
        assert BIN.exists(), f"troupe binary not found at {BIN} (build it or set TROUPE_BIN)"
        last_err = ""
        for _ in range(3):  # a port taken between free_port() and bind: retry
            self.port = free_port()
            # Custom personas go to a folder of the test's, never the user's.
            own = [] if "--personas-dir" in self.flags else [
                "--personas-dir", str(self.log_path.parent / f"{self.name}-personas")]
            # Conversations likewise: one database per server.
            if "--db" not in self.flags:
                own += ["--db", str(self.log_path.parent / f"{self.name}.db")]
            cmd = [str(BIN), *data_args(), "serve", "-m", MODEL, "--port", str(self.port),
                   *own, *self.flags]
            self.log = open(self.log_path, "ab")
            self.log.write(("$ " + " ".join(cmd) + "\n").encode())
            self.log.flush()
            self.proc = subprocess.Popen(
                cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            LIVE.append(self)
            ok, last_err = self._wait_ready()
            if ok:
                return self
            self.kill()
            if "Address already in use" not in self.log_text():
                break
        raise RuntimeError(f"server {self.name} did not become ready: {last_err}\n{self.log_tail()}")

    def _wait_ready(self) -> tuple[bool, str]:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        err = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False, f"exited with {self.proc.returncode}"
            try:
                r = httpx.get(self.url + "/ready", headers=self.auth_headers(), timeout=2)
                if r.status_code == 200:
                    return True, ""
                err = f"/ready {r.status_code}"
            except httpx.HTTPError as e:
                err = repr(e)
            time.sleep(0.1)
        return False, "timed out: " + err

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._forget()
        return rc

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._forget()

    def _forget(self) -> None:
        if self in LIVE:
            LIVE.remove(self)
        try:
            self.log.close()
        except Exception:
            pass

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 4000) -> str:
        return self.log_text()[-n:]

    # --- convenience -------------------------------------------------
    def client(self, **kw) -> httpx.Client:
        headers = {**self.auth_headers(), **kw.pop("headers", {})}
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", REQUEST_TIMEOUT), headers=headers, **kw)

    def openai(self, **kw):
        import openai

        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=kw.pop("api_key", self.api_key or "unused"),
            timeout=kw.pop("timeout", REQUEST_TIMEOUT),
            max_retries=0,
            **kw,
        )

    def tokenize_messages(self, messages: list[dict]) -> int:
        r = httpx.post(self.url + "/tokenize", json={"messages": messages}, headers=self.auth_headers(), timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == len(body["tokens"])
        return body["count"]

    def metrics(self) -> dict[str, float]:
        r = httpx.get(self.url + "/metrics", headers=self.auth_headers(), timeout=30)
        assert r.status_code == 200, r.text
        return parse_prometheus(r.text)


def parse_prometheus(text: str) -> dict[str, float]:
    """`name{labels}` (labels as written) → value, for every sample line."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?) (\S+)', line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out[m.group(1)] = float(m.group(2))
    return out


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None,
                        kind: str | None = None) -> dict:
    """Status and OpenAI's error shape {"error": {"message", "type", "param", "code"}}."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] is None or isinstance(err["code"], str), err
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    if kind is not None:
        assert err["type"] == kind, err
    return err


def chat_body(content: str, max_tokens: int = 8, **extra) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": max_tokens,
        **extra,
    }


class SSEStream:
    """A streamed POST over its own http.client connection, read event by
    event, so a test can stop reading and drop the connection at will."""

    def __init__(self, server: Server, path: str, body: dict, timeout: float = REQUEST_TIMEOUT):
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
        headers = {"Content-Type": "application/json", **server.auth_headers()}
        self.conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = dict(self.resp.getheaders())

    def next_event(self) -> tuple[str, str] | None:
        """(event type, data) of the next event; None at the end of the body."""
        event, data = "message", []
        while True:
            line = self.resp.readline()
            if not line:
                return (event, "\n".join(data)) if data else None
            line = line.decode("utf-8").rstrip("\r\n")
            if line == "":
                if data:
                    return event, "\n".join(data)
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)

    def events(self):
        while (ev := self.next_event()) is not None:
            yield ev

    def close(self) -> None:
        """Drops the connection without reading the rest."""
        try:
            if self.conn.sock is not None:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()


def stream_text(events) -> tuple[str, list[dict]]:
    """Concatenated chat delta text and the parsed chunks, up to [DONE]
    (asserts that it comes and that no error event does)."""
    text, chunks = [], []
    for ev, data in events:
        assert ev == "message", f"unexpected SSE event {ev}: {data}"
        if data == "[DONE]":
            return "".join(text), chunks
        c = json.loads(data)
        chunks.append(c)
        for ch in c.get("choices", []):
            text.append(ch.get("delta", {}).get("content") or "")
    raise AssertionError("stream ended without data: [DONE]")


def assert_kv_gauges_add_up(m: dict[str, float]) -> None:
    states = ("used", "pinned", "free", "cached")
    n = {k: m[f'troupe_kv_blocks{{state="{k}"}}'] for k in states}
    assert min(n.values()) >= 0, n
    assert sum(n.values()) == m["troupe_kv_blocks_total"], (n, m["troupe_kv_blocks_total"])


def sse_events(resp: httpx.Response):
    """(event, data) pairs of a streamed httpx response."""
    event, data = "message", []
    for line in resp.iter_lines():
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)
