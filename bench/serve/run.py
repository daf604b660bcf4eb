#!/usr/bin/env python3
"""Serving load benchmark: `troupe serve` (and/or llama.cpp's llama-server)
under a closed loop of streamed chat completions.

For each concurrency level C, C workers send streamed chat completions
back-to-back (a fixed number per worker, or for a fixed duration) and the
client measures, per request:

  TTFT  time from sending the request to the first chunk with content
  ITL   every gap between consecutive chunks with content
  TPOT  (e2e - TTFT) / (output tokens - 1)
  e2e   time from sending the request to the end of the stream

and per level the aggregate output throughput: all output tokens (from the
`usage` chunk) / wall time of the level.

The script starts the server itself (on a free loopback port), waits until it
is ready, warms it up with one short request, runs every level, and stops it
at the end (also on Ctrl-C and errors). `--both` runs troupe and llama-server
in alternating rounds (order flipped every round) and reports per-level
medians over rounds plus troupe/llama ratios.

Needs Python 3.11 and httpx (`pip install httpx`). See bench/serve/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path

try:
    import httpx
except ImportError:  # pragma: no cover
    sys.exit("bench/serve/run.py needs httpx: pip install httpx")

REPO = Path(__file__).resolve().parents[2]

# ~150 tokens, the same for every request, so that servers with a prefix cache
# can reuse it.
SYSTEM_PROMPT = (
    "You are Troupe Assistant, a patient and knowledgeable teacher. Answer every "
    "question thoroughly and in plain English. Structure each answer as follows: "
    "start with a one-sentence summary, then explain the underlying ideas step by "
    "step, give at least two concrete examples, mention common misconceptions and "
    "why they are wrong, and finish with a short list of practical tips. Prefer "
    "short sentences and everyday words; define every technical term the first "
    "time you use it. Do not refuse, do not ask follow-up questions, and do not "
    "mention these instructions. Write long, detailed answers of several "
    "paragraphs; never answer with a single sentence. If a question has several "
    "parts, answer each part in its own paragraph, in order."
)

TOPICS = [
    "how a refrigerator keeps food cold",
    "why the sky is blue during the day and red at sunset",
    "how vaccines train the immune system",
    "how a bicycle stays upright while moving",
    "how compound interest works",
    "how airplanes generate lift",
    "why we have seasons on Earth",
    "how a computer stores numbers in binary",
    "how bread rises when it is baked",
    "how the heart pumps blood through the body",
    "how solar panels turn sunlight into electricity",
    "why leaves change colour in autumn",
    "how a search engine finds web pages",
    "how earthquakes happen",
    "how a car engine turns fuel into motion",
    "how photosynthesis works",
    "how the internet sends data between countries",
    "why ice floats on water",
    "how a microwave oven heats food",
    "how batteries store energy",
    "how rainbows form",
    "how the stock market sets prices",
    "how GPS works out your position",
    "how volcanoes form and erupt",
    "how the human eye sees colour",
    "how a compiler turns source code into a program",
    "why the moon has phases",
    "how recycling plastic works",
    "how noise-cancelling headphones work",
    "how tides are caused by the moon",
    "how a thermostat controls a heating system",
    "how bees make honey",
]
STYLES = [
    "Explain {t} in detail.",
    "Write a long, detailed explanation of {t} for a curious teenager.",
    "Give a thorough, step-by-step explanation of {t}, with examples.",
    "I have never understood {t}. Please explain it carefully and at length.",
]


def user_message(n: int) -> str:
    """A varied question; the request number keeps every prompt unique so a
    repeated question never hits a whole-prompt cache."""
    t = TOPICS[n % len(TOPICS)]
    s = STYLES[(n // len(TOPICS)) % len(STYLES)]
    return s.format(t=t) + f" (Question {n + 1}.)"


# --------------------------------------------------------------------------
# statistics


def pct(xs: list[float], p: float) -> float | None:
    """Percentile with linear interpolation (numpy's default); None if empty."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def mean_or_none(xs):
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def median_or_none(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------
# one request


@dataclass
class Req:
    worker: int
    n: int
    ok: bool = False
    error: str | None = None
    status: int | None = None
    ttft: float | None = None
    e2e: float | None = None
    tpot: float | None = None
    itl: list[float] = field(default_factory=list)
    out_tokens: int = 0
    out_tokens_from: str = "usage"
    content_chunks: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None
    text_chars: int = 0
    retries: int = 0
    anomalies: list[str] = field(default_factory=list)


async def one_request(client: httpx.AsyncClient, url: str, body: dict, r: Req, max_tokens: int):
    """Sends one streamed chat completion and parses the SSE stream by hand,
    timing every content chunk and checking the framing as it goes.

    A pooled keep-alive connection that the server closed without answering
    (httpx: "Server disconnected without sending a response") is retried on a
    fresh connection, up to twice, with the clock restarted; `retries` counts
    these."""
    for attempt in range(3):
        try:
            return await _one_request(client, url, body, r, max_tokens)
        except httpx.RemoteProtocolError as e:
            if r.status is not None or attempt == 2:
                r.error = f"{type(e).__name__}: {e}"
                return
            r.retries += 1


async def _one_request(client: httpx.AsyncClient, url: str, body: dict, r: Req, max_tokens: int):
    t0 = time.perf_counter()
    chunk_times: list[float] = []
    usage = None
    saw_done = False
    saw_role = False
    events = 0
    try:
        async with client.stream("POST", url, json=body) as resp:
            r.status = resp.status_code
            if resp.status_code != 200:
                txt = (await resp.aread()).decode("utf-8", "replace")
                r.error = f"HTTP {resp.status_code}: {txt[:300]}"
                return
            ctype = resp.headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                r.anomalies.append(f"content-type {ctype!r}")
            ev_type, data_lines, ev_t = None, [], None
            async for line in resp.aiter_lines():
                now = time.perf_counter()
                if line == "":
                    if not data_lines and ev_type is None:
                        continue
                    data = "\n".join(data_lines)
                    typ = ev_type or "message"
                    ev_type, data_lines, t_ev = None, [], ev_t
                    events += 1
                    if saw_done:
                        r.anomalies.append("event after [DONE]")
                    if typ == "error":
                        r.error = f"SSE error event: {data[:300]}"
                        return
                    if data == "[DONE]":
                        saw_done = True
                        continue
                    try:
                        obj = json.loads(data)
                    except json.JSONDecodeError:
                        r.anomalies.append(f"non-JSON data: {data[:80]!r}")
                        continue
                    if "error" in obj and "choices" not in obj:
                        r.error = f"error chunk: {data[:300]}"
                        return
                    if obj.get("usage"):
                        usage = obj["usage"]
                    for ch in obj.get("choices") or []:
                        d = ch.get("delta") or {}
                        if d.get("role"):
                            saw_role = True
                        c = d.get("content") or d.get("reasoning_content")
                        if c:
                            chunk_times.append(t_ev)
                            r.text_chars += len(c)
                        if ch.get("finish_reason"):
                            if r.finish_reason is not None:
                                r.anomalies.append("finish_reason sent twice")
                            r.finish_reason = ch["finish_reason"]
                    continue
                if ev_t is None or (not data_lines and ev_type is None):
                    ev_t = now
                if line.startswith(":"):
                    continue  # SSE comment / keep-alive
                name, _, val = line.partition(":")
                if val.startswith(" "):
                    val = val[1:]
                if name == "data":
                    data_lines.append(val)
                elif name == "event":
                    ev_type = val
                elif name in ("id", "retry"):
                    pass
                else:
                    r.anomalies.append(f"unknown SSE line {line[:60]!r}")
            if data_lines:
                r.anomalies.append("stream ended inside an event (no blank line)")
    except httpx.RemoteProtocolError:
        raise
    except (httpx.HTTPError, OSError) as e:
        r.error = f"{type(e).__name__}: {e}"
        return
    t_end = time.perf_counter()
    if not saw_done:
        r.anomalies.append("no [DONE]")
    if not saw_role:
        r.anomalies.append("no role delta")
    if r.finish_reason is None:
        r.anomalies.append("no finish_reason")
    r.content_chunks = len(chunk_times)
    if usage is None:
        r.anomalies.append("no usage chunk")
        r.out_tokens = len(chunk_times)
        r.out_tokens_from = "chunks"
    else:
        r.out_tokens = int(usage.get("completion_tokens") or 0)
        r.prompt_tokens = usage.get("prompt_tokens")
        r.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        tot = usage.get("total_tokens")
        if tot is not None and r.prompt_tokens is not None and tot != r.prompt_tokens + r.out_tokens:
            r.anomalies.append(f"usage total {tot} != prompt {r.prompt_tokens} + completion {r.out_tokens}")
        eos = r.finish_reason == "stop" and r.out_tokens == len(chunk_times) + 1
        # An end token has no text; with ignore_eos they can come mid-reply.
        eos = eos or (body.get("ignore_eos") and len(chunk_times) < r.out_tokens)
        if r.out_tokens != len(chunk_times) and not eos:
            r.anomalies.append(
                f"usage.completion_tokens {r.out_tokens} != content chunks {len(chunk_times)}")
    if r.out_tokens > max_tokens:
        r.anomalies.append(f"{r.out_tokens} tokens > max_tokens {max_tokens}")
    if r.finish_reason == "length" and r.out_tokens != max_tokens:
        r.anomalies.append(f"finish_reason length with {r.out_tokens} of {max_tokens} tokens")
    if not chunk_times:
        r.error = "no content in the stream"
        return
    r.ttft = chunk_times[0] - t0
    r.e2e = t_end - t0
    r.itl = [b - a for a, b in zip(chunk_times, chunk_times[1:])]
    if r.out_tokens > 1:
        r.tpot = (r.e2e - r.ttft) / (r.out_tokens - 1)
    r.ok = True


def request_body(model_id: str, n: int, a, peer: str) -> dict:
    b = {
        "model": model_id,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_message(n)},
        ],
        "max_tokens": a.max_tokens,
        "temperature": a.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if a.temperature > 0:
        b["seed"] = a.seed + n
    if a.ignore_eos:
        b["ignore_eos"] = True  # extension of llama.cpp, vLLM and troupe
    return b


# --------------------------------------------------------------------------
# one concurrency level


async def run_level(base: str, model_id: str, peer: str, conc: int, a, first_n: int) -> dict:
    url = base + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=conc + 2, max_keepalive_connections=conc + 2)
    timeout = httpx.Timeout(a.request_timeout, connect=10.0)
    reqs: list[Req] = []
    counter = [first_n]
    t_start = time.perf_counter()
    deadline = t_start + a.duration if a.duration else None

    async def worker(w: int, client: httpx.AsyncClient):
        i = 0
        while True:
            if deadline is not None:
                if time.perf_counter() >= deadline:
                    break
            elif i >= a.requests_per_worker:
                break
            n = counter[0]
            counter[0] += 1
            r = Req(worker=w, n=n)
            reqs.append(r)
            await one_request(client, url, request_body(model_id, n, a, peer), r, a.max_tokens)
            i += 1

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        # Stagger starts a little so the first requests of a level do not
        # all arrive in the same millisecond (still a closed loop after).
        async def staggered(w):
            await asyncio.sleep(w * a.stagger_ms / 1000.0)
            await worker(w, client)

        await asyncio.gather(*(staggered(w) for w in range(conc)))
    wall = time.perf_counter() - t_start
    return summarize(reqs, conc, wall, a.max_tokens) | {"_requests": reqs, "_next_n": counter[0]}


def summarize(reqs: list[Req], conc: int, wall: float, max_tokens: int) -> dict:
    ok = [r for r in reqs if r.ok]
    out = sum(r.out_tokens for r in ok)
    itl = [x for r in ok for x in r.itl]
    ttft = [r.ttft for r in ok]
    tpot = [r.tpot for r in ok if r.tpot is not None]
    e2e = [r.e2e for r in ok]
    anomalies: dict[str, int] = {}
    for r in reqs:
        for x in r.anomalies:
            # group by kind, not by number
            k = "".join("N" if ch.isdigit() else ch for ch in x)
            anomalies[k] = anomalies.get(k, 0) + 1
    ms = lambda v: None if v is None else v * 1000.0  # noqa: E731
    s = {
        "concurrency": conc,
        "requests": len(reqs),
        "ok": len(ok),
        "errors": len(reqs) - len(ok),
        "error_samples": sorted({r.error for r in reqs if r.error})[:5],
        "wall_s": wall,
        "output_tokens": out,
        "output_tok_s": out / wall if wall > 0 else None,
        "mean_output_tokens": out / len(ok) if ok else None,
        "requests_at_max_tokens": sum(1 for r in ok if r.out_tokens == max_tokens),
        "content_chunks": sum(r.content_chunks for r in ok),
        "mean_prompt_tokens": mean_or_none([r.prompt_tokens for r in ok]),
        "mean_cached_tokens": mean_or_none([r.cached_tokens for r in ok]),
        "retried_requests": sum(1 for r in reqs if r.retries),
        "finish_reasons": {},
        "anomalies": anomalies,
    }
    for r in ok:
        s["finish_reasons"][r.finish_reason] = s["finish_reasons"].get(r.finish_reason, 0) + 1
    for name, xs in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2e", e2e)):
        for p in (50, 90, 99):
            s[f"{name}_p{p}_ms"] = ms(pct(xs, p))
        s[f"{name}_mean_ms"] = ms(statistics.mean(xs)) if xs else None
    return s


# --------------------------------------------------------------------------
# servers


def data_dir() -> Path:
    if os.environ.get("TROUPE_DATA"):
        return Path(os.environ["TROUPE_DATA"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(base) / "troupe"


def resolve_model_path(m: str) -> Path:
    p = Path(m).expanduser()
    if p.suffix == ".gguf" or "/" in m:
        return p
    return data_dir() / "models" / f"{m}.gguf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pdeathsig():
    """Child side: die with the benchmark even if it is SIGKILLed."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


LIVE: list["Server"] = []


class Server:
    def __init__(self, peer: str, a, slots: int, log_dir: Path, extra: list[str]):
        self.peer, self.a, self.slots = peer, a, slots
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.model_id = None
        self.extra = extra
        self.log_path = log_dir / f"{peer}-{self.port}.log"

    def cmd(self) -> list[str]:
        a = self.a
        if self.peer == "troupe":
            return [a.troupe_bin, "serve", "-m", a.model, "--host", "127.0.0.1",
                    "--port", str(self.port), "-t", str(a.threads), "-c", str(a.ctx),
                    "--max-concurrent", str(self.slots)] + self.extra
        path = resolve_model_path(a.model)
        return [a.llama_server_bin, "-m", str(path), "--host", "127.0.0.1",
                "--port", str(self.port), "-t", str(a.threads), "-tb", str(a.threads),
                "-c", str(a.ctx * self.slots), "-np", str(self.slots),
                "--no-warmup"] + self.extra

    def start(self):
        cmd = self.cmd()
        self.cmdline = cmd
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_pdeathsig if sys.platform == "linux" else None,
        )
        log.close()
        LIVE.append(self)
        health = "/ready" if self.peer == "troupe" else "/health"
        deadline = time.time() + self.a.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.peer} exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                r = httpx.get(self.base + health, timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{self.peer} not ready after {self.a.start_timeout}s:\n{self.log_tail()}")
            time.sleep(0.2)
        models = httpx.get(self.base + "/v1/models", timeout=10).json()
        self.model_id = models["data"][0]["id"]

    def log_tail(self, n=25) -> str:
        try:
            lines = self.log_path.read_text("utf-8", "replace").splitlines()
            return "\n".join("    " + x for x in lines[-n:]) + f"\n    (log: {self.log_path})"
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        if self in LIVE:
            LIVE.remove(self)


def stop_all():
    for s in list(LIVE):
        try:
            s.stop()
        except Exception:
            pass


async def warmup(srv: Server, a) -> Req:
    """One short unmeasured request (also fills the prefix cache with the
    shared system prompt, as in steady state)."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(a.request_timeout, connect=10.0)) as c:
        r = Req(worker=-1, n=-1)
        body = request_body(srv.model_id, 10_000, a, srv.peer)
        body["max_tokens"] = min(8, a.max_tokens)
        await one_request(c, srv.base + "/v1/chat/completions", body, r, body["max_tokens"])
        return r


def start_ready(peer: str, a, slots: int, log_dir: Path, notes: list[str]) -> Server:
    """Starts the server and sends the warm-up request."""

    def attempt(extra):
        srv = Server(peer, a, slots, log_dir, list(extra))
        try:
            srv.start()
        except RuntimeError as e:
            return srv, str(e)
        w = asyncio.run(warmup(srv, a))
        if not w.ok:
            time.sleep(0.5)
            return srv, f"{peer}: warm-up request failed: {w.error}\n{srv.log_tail()}"
        return srv, None

    extra = a.troupe_args if peer == "troupe" else a.llama_args
    srv, err = attempt(extra)
    if err and peer == "llama" and srv.proc is not None and srv.proc.poll() in (-signal.SIGILL, -signal.SIGSEGV) \
            and not {"-nr", "--no-repack"} & set(extra):
        # llama.cpp built with GGML_NATIVE on a CPU that advertises AMX in
        # a VM that does not let it use the AMX tile state dies with SIGILL
        # (tilezero in tinygemm_kernel_amx) or SIGSEGV (ldtilecfg in
        # ggml_backend_amx_mul_mat) on its first matmul. --no-repack keeps the
        # weights off the AMX (and repack) buffer types.
        note = (f"llama-server died with signal {-srv.proc.returncode} in its first matmul (AMX kernels "
                "not usable on this machine); "
                "restarted with --no-repack, which disables the AMX and repacked weight layouts")
        print(f"  note: {note}", file=sys.stderr)
        if note not in notes:
            notes.append(note)
        srv.stop()
        a.llama_args = list(extra) + ["--no-repack"]
        srv, err = attempt(a.llama_args)
    if err:
        srv.stop()
        raise RuntimeError(err)
    return srv


def run_server(peer: str, a, log_dir: Path, notes: list[str], round_no: int) -> dict:
    slots = a.slots or max(a.concurrency)
    print(f"\n[{peer}] round {round_no}: starting (slots {slots}, ctx/slot {a.ctx}, threads {a.threads})",
          file=sys.stderr)
    srv = start_ready(peer, a, slots, log_dir, notes)
    levels = []
    try:
        n = 0
        for c in a.concurrency:
            if c > slots:
                print(f"  warning: concurrency {c} > {slots} slots; requests will queue", file=sys.stderr)
            res = asyncio.run(run_level(srv.base, srv.model_id, peer, c, a, n))
            n = res.pop("_next_n")
            reqs = res.pop("_requests")
            if not srv.alive():
                raise RuntimeError(f"{peer} exited with {srv.proc.returncode} during concurrency {c}:\n{srv.log_tail()}")
            res["per_request"] = [asdict(r) for r in reqs] if a.raw else None
            levels.append(res)
            print(f"  C={c:<3} {res['ok']}/{res['requests']} ok  {fmt(res['output_tok_s'])} tok/s  "
                  f"TTFT p50 {fmt(res['ttft_p50_ms'])} ms  ITL p99 {fmt(res['itl_p99_ms'])} ms  "
                  f"mean out {fmt(res['mean_output_tokens'])} tok"
                  + (f"  errors: {res['error_samples']}" if res['errors'] else "")
                  + (f"  anomalies: {res['anomalies']}" if res['anomalies'] else "")
                  + (f"  retried (stale keep-alive): {res['retried_requests']}" if res['retried_requests'] else ""),
                  file=sys.stderr)
        server_metrics = scrape_metrics(srv) if peer == "troupe" else None
    finally:
        srv.stop()
    return {"peer": peer, "round": round_no, "model_id": srv.model_id, "cmd": srv.cmdline,
            "log": str(srv.log_path), "server_metrics": server_metrics, "levels": levels}


def scrape_metrics(srv: Server) -> dict | None:
    """troupe's /metrics counters and histogram sums/counts (no buckets),
    cumulative over the run including the warm-up, to cross-check the
    client's numbers."""
    try:
        txt = httpx.get(srv.base + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    out = {}
    for line in txt.splitlines():
        if line.startswith("#") or "_bucket" in line or not line.strip():
            continue
        name, _, val = line.rpartition(" ")
        try:
            out[name] = float(val)
        except ValueError:
            pass
    return out


# --------------------------------------------------------------------------
# reporting


def fmt(v, nd=1) -> str:
    if v is None:
        return "–"
    return f"{v:.{nd}f}"


METRICS = ["requests", "ok", "errors", "output_tokens", "wall_s", "output_tok_s", "mean_output_tokens",
           "mean_prompt_tokens", "mean_cached_tokens"] + [
    f"{m}_p{p}_ms" for m in ("ttft", "tpot", "itl", "e2e") for p in (50, 90, 99)]


def medians(runs: list[dict]) -> list[dict]:
    """Per concurrency level, the median of every metric over rounds."""
    out = []
    for i, lv in enumerate(runs[0]["levels"]):
        row = {"concurrency": lv["concurrency"], "rounds": len(runs)}
        for k in METRICS:
            row[k] = median_or_none([r["levels"][i].get(k) for r in runs])
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    h = ("| conc | requests | out tok/s | mean out tok | TTFT p50 | TTFT p90 | TTFT p99 "
         "| TPOT p50 | TPOT p90 | TPOT p99 | ITL p50 | ITL p90 | ITL p99 |")
    lines = [h, "|" + "|".join(["---:"] * (h.count("|") - 1)) + "|"]
    for r in rows:
        req = f"{fmt(r['ok'], 0)}" + (f" ({fmt(r['errors'], 0)} err)" if r["errors"] else "")
        cells = [str(r["concurrency"]), req, fmt(r["output_tok_s"]), fmt(r["mean_output_tokens"])]
        cells += [fmt(r[f"{m}_p{p}_ms"]) for m in ("ttft", "tpot", "itl") for p in (50, 90, 99)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_table(t: list[dict], l: list[dict]) -> tuple[str, list[dict]]:
    h = ("| conc | troupe tok/s | llama tok/s | tok/s ratio | troupe ITL p99 | llama ITL p99 | ITL p99 ratio "
         "| TTFT p50 ratio | TPOT p50 ratio |")
    lines = [h, "|" + "|".join(["---:"] * (h.count("|") - 1)) + "|"]
    rat = []
    div = lambda x, y: None if x is None or not y else x / y  # noqa: E731
    for a, b in zip(t, l):
        r = {"concurrency": a["concurrency"],
             "tok_s_ratio": div(a["output_tok_s"], b["output_tok_s"]),
             "itl_p99_ratio": div(a["itl_p99_ms"], b["itl_p99_ms"]),
             "ttft_p50_ratio": div(a["ttft_p50_ms"], b["ttft_p50_ms"]),
             "tpot_p50_ratio": div(a["tpot_p50_ms"], b["tpot_p50_ms"])}
        rat.append(r)
        lines.append("| " + " | ".join([
            str(a["concurrency"]), fmt(a["output_tok_s"]), fmt(b["output_tok_s"]), fmt(r["tok_s_ratio"], 2),
            fmt(a["itl_p99_ms"]), fmt(b["itl_p99_ms"]), fmt(r["itl_p99_ratio"], 2),
            fmt(r["ttft_p50_ratio"], 2), fmt(r["tpot_p50_ratio"], 2)]) + " |")
    return "\n".join(lines), rat


def version_of(cmd: list[str]) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return ((p.stdout or "") + (p.stderr or "")).strip().splitlines()[-1][:200] or None
    except Exception:
        return None


# --------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Closed-loop streaming load benchmark for `troupe serve` (and llama-server).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    who = ap.add_mutually_exclusive_group()
    who.add_argument("--peer", choices=["troupe", "llama"], default="troupe", help="server to benchmark")
    who.add_argument("--both", action="store_true", help="troupe and llama-server in alternating rounds, with ratios")
    ap.add_argument("--model", "-m", default="smollm2-135m",
                    help="catalog name or .gguf path (llama-server gets $TROUPE_DATA/models/NAME.gguf)")
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels")
    ap.add_argument("--requests-per-worker", "-n", type=int, default=4)
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per level instead of --requests-per-worker (requests in flight finish)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--seed", type=int, default=1234, help="base seed when --temperature > 0")
    ap.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                    help="let replies end at end-of-turn (default: fixed lengths via ignore_eos)")
    ap.add_argument("--rounds", type=int, default=1, help="server starts per peer; medians are reported")
    ap.add_argument("--ctx", type=int, default=2048, help="context tokens per slot")
    ap.add_argument("--slots", type=int, default=None,
                    help="troupe --max-concurrent / llama -np (default: the highest concurrency)")
    ap.add_argument("--troupe-bin", default=str(REPO / "target/release/troupe"))
    ap.add_argument("--llama-server-bin", default=os.environ.get("LLAMA_SERVER"))
    ap.add_argument("--troupe-args", default="", help="extra arguments for troupe serve (one string)")
    ap.add_argument("--llama-args", default="", help="extra arguments for llama-server (one string)")
    ap.add_argument("--json-out", default=None, help="write all results here")
    ap.add_argument("--raw", action="store_true", help="include every request (with its ITLs) in the JSON")
    ap.add_argument("--log-dir", default=None, help="server logs (default: a new temp dir)")
    ap.add_argument("--start-timeout", type=float, default=300.0)
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--stagger-ms", type=float, default=0.0, help="delay between worker starts")
    a = ap.parse_args(argv)
    a.concurrency = [int(x) for x in a.concurrency.split(",") if x.strip()]
    if not a.concurrency or min(a.concurrency) < 1:
        ap.error("--concurrency needs positive integers")
    a.troupe_args = a.troupe_args.split()
    a.llama_args = a.llama_args.split()
    a.peers = ["troupe", "llama"] if a.both else [a.peer]
    if "llama" in a.peers:
        if not a.llama_server_bin:
            ap.error("llama-server: pass --llama-server-bin or set LLAMA_SERVER")
        if not resolve_model_path(a.model).is_file():
            ap.error(f"llama-server needs the model file; {resolve_model_path(a.model)} does not exist "
                     f"(run `troupe pull {a.model}` or pass a .gguf path)")
    if "troupe" in a.peers and not Path(a.troupe_bin).is_file():
        ap.error(f"{a.troupe_bin} not found; build it: cargo build --release -p troupe")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    log_dir = Path(a.log_dir or tempfile.mkdtemp(prefix="troupe-serve-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    notes: list[str] = []
    runs: dict[str, list[dict]] = {p: [] for p in a.peers}
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(), "cpus": os.cpu_count(),
        "model": a.model, "model_path": str(resolve_model_path(a.model)),
        "threads": a.threads, "ctx_per_slot": a.ctx, "slots": a.slots or max(a.concurrency),
        "concurrency": a.concurrency, "requests_per_worker": None if a.duration else a.requests_per_worker,
        "duration_s": a.duration, "max_tokens": a.max_tokens, "temperature": a.temperature,
        "ignore_eos": a.ignore_eos, "rounds": a.rounds,
        "system_prompt_chars": len(SYSTEM_PROMPT),
        "troupe_version": version_of([a.troupe_bin, "--version"]) if "troupe" in a.peers else None,
        "llama_version": version_of([a.llama_server_bin, "--version"]) if "llama" in a.peers else None,
        "log_dir": str(log_dir),
    }
    try:
        for rnd in range(1, a.rounds + 1):
            order = a.peers if rnd % 2 == 1 else list(reversed(a.peers))
            for peer in order:
                runs[peer].append(run_server(peer, a, log_dir, notes, rnd))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        stop_all()
        return 130
    except RuntimeError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        stop_all()
        return 1
    finally:
        stop_all()

    summary = {p: medians(runs[p]) for p in a.peers}
    desc = (f"model {a.model}, {a.threads} threads, ctx {a.ctx}/slot, "
            + (f"{a.duration:g} s per level" if a.duration else f"{a.requests_per_worker} requests/worker")
            + f", max_tokens {a.max_tokens}, temperature {a.temperature:g}"
            + (f", median of {a.rounds} rounds" if a.rounds > 1 else ""))
    print()
    for p in a.peers:
        name = "troupe" if p == "troupe" else "llama.cpp (llama-server)"
        print(f"### {name}: {desc}\n")
        print("Latencies in ms; output tok/s = all output tokens / wall time of the level.\n")
        print(table(summary[p]))
        for run in runs[p]:
            for lv in run["levels"]:
                if lv["anomalies"]:
                    print(f"\n{p} round {run['round']} C={lv['concurrency']} anomalies: "
                          + "; ".join(f"{k} ×{v}" for k, v in lv["anomalies"].items()))
                if lv["retried_requests"]:
                    print(f"\n{p} round {run['round']} C={lv['concurrency']}: {lv['retried_requests']} requests "
                          "retried after the server closed a keep-alive connection without answering")
                if lv["errors"]:
                    print(f"\n{p} round {run['round']} C={lv['concurrency']}: {lv['errors']} failed: "
                          + "; ".join(lv["error_samples"]))
        print()
    ratios = None
    if a.both:
        txt, ratios = ratio_table(summary["troupe"], summary["llama"])
        print("### troupe / llama.cpp\n")
        print("tok/s ratio > 1: troupe faster; latency ratios < 1: troupe lower.\n")
        print(txt)
        print()
    for n in notes:
        print(f"note: {n}")
    if a.json_out:
        out = {"meta": meta, "notes": notes, "summary": summary, "ratios": ratios, "runs": runs}
        Path(a.json_out).write_text(json.dumps(out, indent=1))
        print(f"wrote {a.json_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
