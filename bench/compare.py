#!/usr/bin/env python3
"""Troupe against llama.cpp on this CPU, in alternating runs.

For each model and round: `troupe bench` (prefill PP tokens, decode TG
tokens), llama.cpp's `llama-bench` with the same model, threads and token
counts, `troupe bench --batch B` (B sequences decoding together) and
`llama-batched-bench` (B parallel sequences), plus a memory-bandwidth probe.
Rounds alternate the two engines so that drifting machine load hits both;
the summary gives medians, ratios, troupe's batch scaling, decode speed as
a share of the bandwidth limit, and peak RSS against model + KV cache.

The peer is built by bench/setup_llama.sh (cached). This machine shares its
cores: quote medians and ratios, never single runs.

    python3 bench/compare.py                         # all three models, 5 rounds
    python3 bench/compare.py --models qwen2.5-coder-0.5b --rounds 7 --json-out r.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ["smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m"]


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def run(cmd: list[str], timeout: float = 1800) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def data_dir() -> Path:
    d = os.environ.get("TROUPE_DATA")
    if d:
        return Path(d)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "troupe"


def tensor_bytes(path: Path) -> dict[str, int]:
    """Tensor name → bytes, from the GGUF header (offset differences)."""
    with open(path, "rb") as f:
        head = f.read(64 << 20)
    size = path.stat().st_size
    magic, version, n_tensors, n_kv = struct.unpack_from("<IIQQ", head, 0)
    assert magic == 0x46554747, f"{path} is not GGUF"
    o = 24
    scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(o: int) -> tuple[str, int]:
        n = struct.unpack_from("<Q", head, o)[0]
        return head[o + 8:o + 8 + n].decode("utf-8", "replace"), o + 8 + n

    def skip_value(t: int, o: int) -> int:
        if t == 8:
            return string(o)[1]
        if t == 9:
            et, n = struct.unpack_from("<IQ", head, o)
            o += 12
            if et == 8:
                for _ in range(n):
                    o = string(o)[1]
                return o
            return o + scalar[et] * n
        return o + scalar[t]

    alignment = 32
    for _ in range(n_kv):
        key, o = string(o)
        t = struct.unpack_from("<I", head, o)[0]
        o += 4
        if key == "general.alignment":
            alignment = struct.unpack_from("<I", head, o)[0]
        o = skip_value(t, o)
    infos = []
    for _ in range(n_tensors):
        name, o = string(o)
        nd = struct.unpack_from("<I", head, o)[0]
        o += 4 + 8 * nd
        _ty, off = struct.unpack_from("<IQ", head, o)
        o += 12
        infos.append((off, name))
    data = (o + alignment - 1) // alignment * alignment
    infos.sort()
    out = {}
    for i, (off, name) in enumerate(infos):
        end = infos[i + 1][0] if i + 1 < len(infos) else size - data
        out[name] = end - off
    return out


def decode_weight_bytes(path: Path) -> int:
    """Bytes one decode step reads: every tensor but the embedding table
    (one row of it), unless the table is also the output layer (tied)."""
    t = tensor_bytes(path)
    total = sum(t.values())
    if "output.weight" in t:
        total -= t.get("token_embd.weight", 0)
    return total


def troupe_bench(binary: Path, model: str, threads: int, pp: int, tg: int, batch: int = 1) -> dict:
    cmd = [str(binary), "bench", "-m", model, "-t", str(threads), "--prompt-tokens", str(pp),
           "--gen-tokens", str(tg), "--reps", "1", "--json"]
    if batch > 1:
        cmd += ["--batch", str(batch)]
    return json.loads(run(cmd).strip().splitlines()[-1])


def llama_bench(bindir: Path, path: Path, threads: int, pp: int, tg: int, extra: list[str]) -> tuple[float, float]:
    out = run([str(bindir / "llama-bench"), "-m", str(path), "-t", str(threads), "-p", str(pp),
               "-n", str(tg), "-r", "1", "-o", "json", *extra])
    rows = json.loads(out)
    ppv = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
    tgv = next(r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)
    return ppv, tgv


def llama_batched(bindir: Path, path: Path, threads: int, tg: int, batch: int, extra: list[str]) -> float:
    """Aggregate decode tok/s of `batch` parallel sequences (S_TG)."""
    ctx = batch * (16 + tg) + 64
    out = run([str(bindir / "llama-batched-bench"), "-m", str(path), "-t", str(threads), "-c", str(ctx),
               "-b", "2048", "-ub", "512", "-npp", "16", "-ntg", str(tg), "-npl", str(batch),
               "--output-format", "jsonl", *extra])
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            row = json.loads(line)
            if int(row.get("pl", 0)) == batch:
                return float(row["speed_tg"])
    raise RuntimeError(f"no result for {batch} sequences in llama-batched-bench output:\n{out[-2000:]}")


def default_llama_args() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return "--repack 0" if re.search(r"\bamx_tile\b", flags) else ""


def membw(binary: Path, threads: int) -> float:
    out = run([str(binary), "bench", "--memory-bandwidth", "-t", str(threads), "--reps", "3", "--json"])
    return json.loads(out.strip().splitlines()[-1])["read_gb_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--llama-bin", help="directory with llama-bench and llama-batched-bench "
                    "(default: build them with bench/setup_llama.sh)")
    ap.add_argument("--llama-args", default=os.environ.get("LLAMA_BENCH_ARGS", default_llama_args()),
                    help="extra llama-bench flags (default: '--repack 0' on CPUs with AMX, where the "
                    "native build with GCC 12 crashes in ggml's AMX repack path, else none; "
                    "see DEVELOPERS.md)")
    ap.add_argument("--json-out", help="also write the summary JSON here")
    a = ap.parse_args()

    log("building troupe (release)")
    run(["cargo", "build", "--release", "-q", "-p", "troupe"], timeout=3600)
    binary = REPO / "target" / "release" / "troupe"
    bindir = Path(a.llama_bin) if a.llama_bin else Path(run(["bash", str(REPO / "bench" / "setup_llama.sh")],
                                                               timeout=7200).strip().splitlines()[-1])
    if not bindir.is_absolute():
        bindir = REPO / bindir
    extra = a.llama_args.split()
    batched_extra = ["--no-repack"] if re.search(r"--repack\s+0", a.llama_args) else []

    results: dict = {}
    bws: list[float] = []
    for m in a.models:
        path = data_dir() / "models" / f"{m}.gguf"
        if not path.exists():
            run([str(binary), "pull", m], timeout=3600)
        r = results.setdefault(m, {k: [] for k in ("t_pp", "t_tg", "t_b", "l_pp", "l_tg", "l_b", "rss")})
        for i in range(a.rounds):
            log(f"{m}: round {i + 1}/{a.rounds}")
            t = troupe_bench(binary, m, a.threads, a.pp, a.tg)
            r["t_pp"].append(t["prefill_tok_s"])
            r["t_tg"].append(t["decode_tok_s"])
            r["rss"].append(t)
            lp, lt = llama_bench(bindir, path, a.threads, a.pp, a.tg, extra)
            r["l_pp"].append(lp)
            r["l_tg"].append(lt)
            tb = troupe_bench(binary, m, a.threads, 16, a.tg, a.batch)
            r["t_b"].append(tb["decode_tok_s"])
            r["l_b"].append(llama_batched(bindir, path, a.threads, a.tg, a.batch, batched_extra))
            bws.append(membw(binary, a.threads))
            log(f"  troupe pp {t['prefill_tok_s']:.1f} tg {t['decode_tok_s']:.1f} b{a.batch} {tb['decode_tok_s']:.1f}"
                f" | llama.cpp pp {lp:.1f} tg {lt:.1f} b{a.batch} {r['l_b'][-1]:.1f} | bw {bws[-1]:.1f} GB/s")

    med = statistics.median
    bw = med(bws)
    summary = {"threads": a.threads, "pp": a.pp, "tg": a.tg, "batch": a.batch, "rounds": a.rounds,
               "llama_args": a.llama_args, "memory_bandwidth_gb_s": bw, "models": {}}
    print(f"\n{a.rounds} alternating rounds, {a.threads} threads, medians; memory read bandwidth {bw:.1f} GB/s\n")
    print(f"| model | test | troupe tok/s | llama.cpp tok/s | ratio |")
    print("|---|---|---:|---:|---:|")
    for m, r in results.items():
        path = data_dir() / "models" / f"{m}.gguf"
        s = {}
        for test, tk, lk in (("prefill", "t_pp", "l_pp"), ("decode", "t_tg", "l_tg"), (f"batch-{a.batch}", "t_b", "l_b")):
            tv, lv = med(r[tk]), med(r[lk])
            s[test] = {"troupe": tv, "llama_cpp": lv, "ratio": tv / lv, "troupe_runs": r[tk], "llama_cpp_runs": r[lk]}
            name = {"prefill": f"pp{a.pp}", "decode": f"tg{a.tg}"}.get(test, test)
            print(f"| {m} | {name} | {tv:.1f} | {lv:.1f} | {tv / lv:.2f} |")
        wb = decode_weight_bytes(path)
        limit = bw * 1e9 / wb
        last = r["rss"][-1]
        s["batch_scaling"] = s[f"batch-{a.batch}"]["troupe"] / s["decode"]["troupe"]
        s["decode_weight_mib"] = wb / 2**20
        s["bandwidth_limit_tok_s"] = limit
        s["decode_share_of_limit"] = s["decode"]["troupe"] / limit
        s["peak_rss_mib"] = max(x["peak_rss_mib"] for x in r["rss"])
        s["model_file_mib"] = last["model_file_mib"]
        s["kv_cache_mib"] = last["kv_cache_mib"]
        s["rss_over_model_and_kv_mib"] = max(x["rss_over_model_and_kv_mib"] for x in r["rss"])
        s["decode_allocs_per_step"] = max(x["decode_allocs_per_step"] for x in r["rss"])
        summary["models"][m] = s
    print()
    for m, s in summary["models"].items():
        print(f"{m}: batch-{a.batch} = {s['batch_scaling']:.2f}x single stream; decode {s['decode']['troupe']:.1f} tok/s"
              f" = {100 * s['decode_share_of_limit']:.0f}% of the bandwidth limit {s['bandwidth_limit_tok_s']:.1f}"
              f" ({s['decode_weight_mib']:.0f} MiB per token); peak RSS {s['peak_rss_mib']:.0f} MiB ="
              f" model {s['model_file_mib']:.0f} + KV {s['kv_cache_mib']:.0f} + {s['rss_over_model_and_kv_mib']:.0f};"
              f" allocations per decode step {s['decode_allocs_per_step']:.2f}")
    print(json.dumps(summary))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
