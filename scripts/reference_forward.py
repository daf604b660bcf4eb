#!/usr/bin/env python3
"""Independent NumPy reference forward pass for Troupe's golden logit tests.

A deliberately plain transformer forward over weights dequantized by the
``gguf`` Python package (``gguf.GGUFReader`` + ``gguf.quants.dequantize``).  It
shares no code with llama.cpp or with the Rust engine; architecture facts were
checked against llama.cpp's src/models/{llama,qwen2,gemma3}.cpp,
src/llama-model.cpp, src/llama-hparams.{h,cpp} and conversion/gemma.py, and the
result against llama.cpp itself (``compare``; scripts/fixtures/README.md has the numbers).

Supported ``general.architecture`` values, everything read from GGUF metadata:

* ``llama``  -- RMSNorm, SwiGLU, RoPE "normal" (adjacent pairs (2i, 2i+1); the
  HF->GGUF converter permutes Q/K rows so this equals HF's rotate-half), GQA,
  output tied to ``token_embd`` when ``output.weight`` is absent.
* ``qwen2``  -- as llama plus Q/K/V biases, RoPE NEOX (pairs (i, i+n_rot/2)).
* ``gemma3`` -- embeddings * sqrt(n_embd); RMSNorm weights used as stored (the
  converter already added Gemma's +1); per-head RMSNorm on Q and K before RoPE;
  post-attention and post-FFN RMSNorm; GELU(tanh)-gated FFN; RoPE NEOX with base
  10000 on sliding-window layers and ``rope.freq_base`` on global layers; layer
  ``il`` is global iff ``il % 6 == 5``; local layers see keys with
  ``q_pos - k_pos < sliding_window``; Q scaled by 1/sqrt(key_length); output
  tied to ``token_embd``; optional final logit soft-capping if the key exists.

Numerics: weights are dequantized to float32; activations, norms, softmax and
RoPE are float64; matmuls run in ``--dtype`` (float64 default for fixtures: the
float32 weights are upcast chunk by chunk; float32 is ~3x faster for the
validation runs).

Usage
-----
    # write tests/fixtures/reference/* (fixture prompts are hard-coded below)
    python3 scripts/reference_forward.py fixtures [--model NAME] [--compare-llama]

    # check the reference against llama.cpp's greedy fixtures
    # (tests/fixtures/greedy/<model>.json, made by scripts/fixtures/greedy.py):
    # teacher-forced argmax at every generated step + top-3 logprob differences
    python3 scripts/reference_forward.py validate [--model NAME] [--max-steps N]

    # full log-softmax vs llama.cpp on the fixture prompts and each model's longest
    # greedy prompt: once on the quantized GGUF (llama-server defaults), once on a
    # temporary all-F32 copy with f32 KV cache and no flash attention
    python3 scripts/reference_forward.py compare [--model NAME] [--json-out FILE]

    # show that the wrong variants disagree (llama rope style, gemma norm +1)
    python3 scripts/reference_forward.py ablate [--case NAME] [--max-steps N]

``--compare-llama`` starts llama-server (via scripts/fixtures/greedy.py) and asks
``/completion`` for n_predict=1 with n_probs=<vocab size>, i.e. llama.cpp's full
log-softmax at the last prompt position, and records max |delta logprob| against
the reference in the fixture JSON (both llama.cpp runs, as in ``compare``).
Needs only numpy and gguf (plus a llama.cpp build for the llama.cpp comparisons).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
import gguf
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize

SCRIPT_VERSION = "reference-forward-v1"

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = Path("/work/models")
OUT_DIR = REPO_ROOT / "tests" / "fixtures" / "reference"
GREEDY_DIR = REPO_ROOT / "tests" / "fixtures" / "greedy"

MATMUL_CHUNK_ROWS = 16384  # rows of a weight matrix upcast at a time

# --------------------------------------------------------------------------
# Fixture prompts.  Token ids are llama.cpp's tokenization (llama-tokenize /
# llama-server /tokenize with add_special + parse_special, build 0c1e570).
# --------------------------------------------------------------------------

CHATML_PROMPT = ("<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n"
                 "<|im_start|>assistant\n")

FIXTURES = {
    "smollm2-135m": {
        "file": "smollm2-135m.gguf",
        "prompt": CHATML_PROMPT,
        "tokens": [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 19842, 281, 582, 2229,
                   30, 2, 198, 1, 520, 9531, 198],
        "top_k": 10,
        "full_logits": True,   # 49152 * 4 B = 192 KiB
    },
    "qwen2.5-coder-0.5b": {
        "file": "qwen2.5-coder-0.5b.gguf",
        "prompt": CHATML_PROMPT,
        "tokens": [151644, 872, 198, 3838, 374, 279, 6722, 315, 9625, 30, 21806, 304, 825, 3409,
                   13, 151645, 198, 151644, 77091, 198],
        "top_k": 20,
        "full_logits": True,   # 151936 * 4 B = 594 KiB
    },
    "gemma3-270m": {
        "file": "gemma3-270m.gguf",
        "prompt": "The quick brown fox jumps over the lazy dog. The capital of France is",
        "tokens": [2, 818, 3823, 8864, 37423, 38167, 1024, 506, 31770, 4799, 236761, 669, 5279,
                   529, 7001, 563],
        "top_k": 20,
        # 262144 * 4 B = 1 MiB: with the other two it would break the ~1.5 MB
        # budget for all fixtures, so Gemma gets top-k + summary statistics.
        "full_logits": False,
    },
}

# Extra top-k-only fixture whose prompt is longer than Gemma's 512-token
# sliding window, so local layers really drop old keys.  Its token ids are the
# llama.cpp tokenization recorded in the greedy fixture (case "raw_long_swa").
LONG_FIXTURES = {
    "gemma3-270m": {"greedy_case": "raw_long_swa", "top_k": 20},
}


# --------------------------------------------------------------------------
# Weights and hyper-parameters
# --------------------------------------------------------------------------

def field(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


@dataclass
class Config:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int          # key/value length per head
    n_ff: int
    n_vocab: int
    eps: float
    n_rot: int
    rope_style: str        # "norm" (adjacent pairs) | "neox" (halves)
    rope_base: float       # global / full-attention layers
    rope_base_swa: float   # sliding-window layers
    sliding_window: int    # 0 = none
    swa_period: int        # layer il is global iff il % period == period - 1
    attn_scale: float      # applied to Q (i.e. to the scores)
    embed_scale: float
    qkv_bias: bool
    qk_norm: bool
    post_norms: bool
    ffn_act: str           # "silu" | "gelu_tanh"
    final_softcap: float   # 0 = none
    tied_output: bool

    def is_swa(self, il: int) -> bool:
        return self.sliding_window > 0 and (il % self.swa_period) < self.swa_period - 1

    def layer_rope_base(self, il: int) -> float:
        return self.rope_base_swa if self.is_swa(il) else self.rope_base


def load_config(reader: GGUFReader, tensor_names: set[str]) -> Config:
    arch = field(reader, "general.architecture")
    if arch not in ("llama", "qwen2", "gemma3"):
        raise ValueError(f"unsupported architecture {arch!r}")
    k = lambda name, default=None: field(reader, f"{arch}.{name}", default)  # noqa: E731
    n_embd = int(k("embedding_length"))
    n_head = int(k("attention.head_count"))
    head_dim = int(k("attention.key_length", n_embd // n_head))
    if int(k("attention.value_length", head_dim)) != head_dim:
        raise ValueError("key_length != value_length is not supported")
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    gemma = arch == "gemma3"
    swa = int(k("attention.sliding_window", 0)) if gemma else 0
    return Config(
        arch=arch,
        n_layer=int(k("block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(k("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(k("feed_forward_length")),
        n_vocab=n_vocab,
        eps=float(k("attention.layer_norm_rms_epsilon")),
        n_rot=int(k("rope.dimension_count", head_dim)),
        rope_style="norm" if arch == "llama" else "neox",
        rope_base=float(k("rope.freq_base", 10000.0)),
        # llama.cpp: hparams.rope_freq_base_train_swa defaults to 10000 and is
        # only overridden by {arch}.rope.freq_base_swa (absent in our Gemma file).
        rope_base_swa=float(k("rope.freq_base_swa", 10000.0)) if gemma else float(k("rope.freq_base", 10000.0)),
        sliding_window=swa,
        swa_period=int(k("attention.sliding_window_pattern", 6)) if gemma else 1,
        attn_scale=1.0 / math.sqrt(head_dim),
        # llama.cpp scales by sqrtf(n_embd) in float32
        embed_scale=float(np.sqrt(np.float32(n_embd))) if gemma else 1.0,
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        qk_norm=gemma,
        post_norms=gemma,
        ffn_act="gelu_tanh" if gemma else "silu",
        final_softcap=float(k("final_logit_softcapping", 0.0) or 0.0) if gemma else 0.0,
        tied_output="output.weight" not in tensor_names,
    )


class Weights:
    """Dequantized float32 tensors in NumPy layout (rows = GGUF ne[1])."""

    def __init__(self, reader: GGUFReader):
        self.tensors = {t.name: t for t in reader.tensors}
        self.cache: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str) -> np.ndarray:
        w = self.cache.get(name)
        if w is None:
            t = self.tensors[name]
            if t.tensor_type == GGMLQuantizationType.F32:
                w = np.array(t.data, dtype=np.float32)
            else:
                w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
            # NumPy shape is GGUF's ne reversed: (n_out, n_in) for matrices
            w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
            self.cache[name] = w
        return w

    def rows(self, name: str, ids: list[int]) -> np.ndarray:
        """Dequantize only some rows (embedding lookup), unless already cached."""
        if name in self.cache:
            return self.cache[name][ids]
        t = self.tensors[name]
        raw = np.asarray(t.data)[ids]
        if t.tensor_type == GGMLQuantizationType.F32:
            return raw.astype(np.float32)
        return dequantize(raw, t.tensor_type).astype(np.float32, copy=False).reshape(len(ids), -1)


# --------------------------------------------------------------------------
# Math helpers (x: float64 activations)
# --------------------------------------------------------------------------

def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # x: (..., n), w: (n,)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w.astype(np.float64)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope(x: np.ndarray, pos: np.ndarray, base: float, n_rot: int, style: str) -> np.ndarray:
    """Rotary embedding. x: (T, H, D) float64, pos: (T,) ints."""
    half = n_rot // 2
    inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2.0 / n_rot)  # (half,)
    ang = pos.astype(np.float64)[:, None] * inv_freq[None, :]             # (T, half)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]           # (T, 1, half)
    out = x.copy()
    if style == "norm":      # pairs (2i, 2i+1)
        i0, i1 = slice(0, n_rot, 2), slice(1, n_rot, 2)
    elif style == "neox":    # pairs (i, i + n_rot/2)
        i0, i1 = slice(0, half), slice(half, n_rot)
    else:
        raise ValueError(style)
    x0, x1 = x[..., i0], x[..., i1]
    out[..., i0] = x0 * cos - x1 * sin
    out[..., i1] = x0 * sin + x1 * cos
    return out


class Model:
    def __init__(self, path: Path, dtype: str = "float64", rope_style: str | None = None,
                 gemma_norm_offset: float = 0.0):
        """``rope_style`` / ``gemma_norm_offset`` exist only for the ablation check."""
        self.reader = GGUFReader(str(path))
        self.w = Weights(self.reader)
        self.cfg = load_config(self.reader, set(self.w.tensors))
        if rope_style is not None:
            self.cfg.rope_style = rope_style
        self.norm_offset = gemma_norm_offset
        self.dtype = np.dtype(dtype)
        self.out_name = "token_embd.weight" if self.cfg.tied_output else "output.weight"

    # x (T, n_in) float64 @ W(n_out, n_in).T -> (T, n_out) float64
    def mm(self, x: np.ndarray, name: str) -> np.ndarray:
        w = self.w.get(name)
        if self.dtype == np.float32:
            return (x.astype(np.float32) @ w.T).astype(np.float64)
        out = np.empty((x.shape[0], w.shape[0]), dtype=np.float64)
        for r in range(0, w.shape[0], MATMUL_CHUNK_ROWS):
            out[:, r:r + MATMUL_CHUNK_ROWS] = x @ w[r:r + MATMUL_CHUNK_ROWS].astype(np.float64).T
        return out

    def norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return rms_norm(x, self.w.get(name) + self.norm_offset, self.cfg.eps)

    def new_cache(self) -> dict:
        return {"pos": 0, "k": [None] * self.cfg.n_layer, "v": [None] * self.cfg.n_layer}

    def forward(self, tokens: list[int], cache: dict | None = None, all_logits: bool = False) -> np.ndarray:
        """Run ``tokens`` after what ``cache`` already holds; returns logits
        (n_vocab,) for the last token, or (T, n_vocab) with ``all_logits``."""
        c = self.cfg
        if cache is None:
            cache = self.new_cache()
        T = len(tokens)
        p0 = cache["pos"]
        pos = np.arange(p0, p0 + T)
        x = self.w.rows("token_embd.weight", list(tokens)).astype(np.float64) * c.embed_scale  # (T, n_embd)
        H, Hkv, D = c.n_head, c.n_head_kv, c.head_dim
        group = H // Hkv
        for il in range(c.n_layer):
            p = f"blk.{il}."
            a = self.norm(x, p + "attn_norm.weight")                      # (T, n_embd)
            q = self.mm(a, p + "attn_q.weight")                            # (T, H*D)
            k = self.mm(a, p + "attn_k.weight")                            # (T, Hkv*D)
            v = self.mm(a, p + "attn_v.weight")                            # (T, Hkv*D)
            if c.qkv_bias:
                q += self.w.get(p + "attn_q.bias")
                k += self.w.get(p + "attn_k.bias")
                v += self.w.get(p + "attn_v.bias")
            q, k, v = q.reshape(T, H, D), k.reshape(T, Hkv, D), v.reshape(T, Hkv, D)
            if c.qk_norm:
                q = self.norm(q, p + "attn_q_norm.weight")
                k = self.norm(k, p + "attn_k_norm.weight")
            base = c.layer_rope_base(il)
            q = rope(q, pos, base, c.n_rot, c.rope_style) * c.attn_scale
            k = rope(k, pos, base, c.n_rot, c.rope_style)
            if cache["k"][il] is not None:
                k = np.concatenate([cache["k"][il], k], axis=0)            # (S, Hkv, D)
                v = np.concatenate([cache["v"][il], v], axis=0)
            cache["k"][il], cache["v"][il] = k, v
            S = k.shape[0]
            kpos = np.arange(S)
            diff = pos[:, None] - kpos[None, :]                            # (T, S)
            masked = diff < 0
            if c.is_swa(il):
                masked |= diff >= c.sliding_window
            kh = np.repeat(k, group, axis=1)                               # (S, H, D)
            vh = np.repeat(v, group, axis=1)
            scores = np.einsum("thd,shd->hts", q, kh)                      # (H, T, S)
            scores = np.where(masked[None], -np.inf, scores)
            scores -= scores.max(axis=-1, keepdims=True)
            prob = np.exp(scores)
            prob /= prob.sum(axis=-1, keepdims=True)
            attn = np.einsum("hts,shd->thd", prob, vh).reshape(T, H * D)  # (T, H*D)
            o = self.mm(attn, p + "attn_output.weight")                   # (T, n_embd)
            if c.post_norms:
                o = self.norm(o, p + "post_attention_norm.weight")
            x = x + o
            f = self.norm(x, p + "ffn_norm.weight")
            g = self.mm(f, p + "ffn_gate.weight")                         # (T, n_ff)
            u = self.mm(f, p + "ffn_up.weight")                           # (T, n_ff)
            h = (gelu_tanh(g) if c.ffn_act == "gelu_tanh" else silu(g)) * u
            d = self.mm(h, p + "ffn_down.weight")                         # (T, n_embd)
            if c.post_norms:
                d = self.norm(d, p + "post_ffw_norm.weight")
            x = x + d
        cache["pos"] = p0 + T
        if not all_logits:
            x = x[-1:]
        x = self.norm(x, "output_norm.weight")
        logits = self.mm(x, self.out_name)                                # (T, n_vocab)
        if c.final_softcap:
            logits = np.tanh(logits / c.final_softcap) * c.final_softcap
        return logits if all_logits else logits[0]


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------
# llama.cpp comparison (full log-softmax via llama-server)
# --------------------------------------------------------------------------

def llama_logprobs(model_file: Path, prompts: list[list[int]], n_vocab: int,
                   extra_args: tuple[str, ...] = ()) -> list[np.ndarray]:
    """llama.cpp's log-softmax over the whole vocab at the last position of each
    prompt (llama-server /completion, n_predict 1, n_probs = vocab size)."""
    sys.path.insert(0, str(REPO_ROOT / "scripts" / "fixtures"))
    import greedy  # noqa: E402  (scripts/fixtures/greedy.py)

    port = greedy.free_port()
    args = greedy.server_args(Path(greedy.DEFAULT_BIN), model_file, port) + list(extra_args)
    server = greedy.Server(args, port)
    out = []
    try:
        server.wait_healthy()
        for toks in prompts:
            resp = server.post("/completion", {
                "prompt": toks, "n_predict": 1, "temperature": 0.0, "top_k": 1,
                "cache_prompt": False, "n_probs": n_vocab, "post_sampling_probs": False,
                "return_tokens": True})
            if resp.get("tokens_evaluated") != len(toks):
                raise AssertionError("llama-server evaluated a different prompt length")
            lp = np.full(n_vocab, -np.inf)
            for q in resp["completion_probabilities"][0]["top_logprobs"]:
                lp[q["id"]] = q["logprob"]
            out.append(lp)
    finally:
        server.close()
    return out


def write_f32_gguf(src: Path, dst: Path) -> None:
    """Copy ``src`` with every tensor dequantized to F32 (same metadata), so that
    llama.cpp runs it without quantizing activations."""
    reader = GGUFReader(str(src))
    arch = field(reader, "general.architecture")
    writer = gguf.GGUFWriter(str(dst), arch)
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        val = f.contents()
        if f.name == "general.file_type":
            val = int(gguf.LlamaFileType.ALL_F32)
        writer.add_key_value(f.name, val, vtype, sub_type=sub)
    weights = Weights(reader)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        writer.add_tensor_info(t.name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4,
                               GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(weights.get(t.name))
        weights.cache.clear()
    writer.close()


def compare_logprobs(ref_logits: np.ndarray, llama_lp: np.ndarray) -> dict:
    ref_lp = log_softmax(ref_logits)
    order_ref = np.argsort(-ref_logits)
    order_llama = np.argsort(-llama_lp)
    sel = llama_lp > -20.0                                 # drop float32 underflow noise
    d = np.abs(ref_lp - llama_lp)
    top100 = order_ref[:100]
    return {
        "what": "max |log_softmax(reference) - llama.cpp logprob|, llama.cpp via llama-server n_probs=vocab",
        "max_abs_logprob_diff_where_llama_logprob_gt_-20": float(d[sel].max()),
        "max_abs_logprob_diff_top100_of_reference": float(d[top100].max()),
        "mean_abs_logprob_diff_top100_of_reference": float(d[top100].mean()),
        "top1_diff": float(d[order_ref[0]]),
        "argmax_reference": int(order_ref[0]),
        "argmax_llama_cpp": int(order_llama[0]),
        "top10_overlap": int(len(set(order_ref[:10]) & set(order_llama[:10]))),
    }


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------

def top_k(logits: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    ids = np.argsort(-logits, kind="stable")[:k]
    return [int(i) for i in ids], [float(np.float32(logits[i])) for i in ids]


def fixture_record(name: str, model: Model, prompt: str, tokens: list[int], k: int,
                   logits: np.ndarray, logits_file: str | None, compare: dict | None) -> dict:
    ids, vals = top_k(logits, k)
    l32 = logits.astype(np.float32)
    rec = {
        "format": "troupe-reference-logits/1",
        "script_version": SCRIPT_VERSION,
        "model": name,
        "model_file": FIXTURES[name]["file"],
        "architecture": model.cfg.arch,
        "prompt": prompt,
        "token_ids": tokens,
        "n_tokens": len(tokens),
        "position": "last",
        "vocab_size": model.cfg.n_vocab,
        "top_k": k,
        "top_ids": ids,
        "top_values": vals,
        "stats": {"max": float(l32.max()), "min": float(l32.min()), "mean": float(l32.mean()),
                  "std": float(l32.std()),
                  "logsumexp": float(np.log(np.exp(logits - logits.max()).sum()) + logits.max())},
        "logits_file": logits_file,
        "logits_dtype": "f32 little-endian, vocab_size values" if logits_file else None,
        "compute": f"numpy, float32 dequantized weights, {model.dtype.name} matmuls, float64 activations",
        "config": asdict(model.cfg),
    }
    if compare is not None:
        rec["llama_cpp_comparison"] = compare
    return rec


F32_SERVER_ARGS = ("-fa", "off", "-ctk", "f32", "-ctv", "f32")


def llama_comparisons(name: str, prompts: list[list[int]], ref_logits: list[np.ndarray],
                      n_vocab: int) -> list[dict]:
    """Compare reference logits with llama.cpp twice: on the original quantized
    GGUF with llama-server defaults (8-bit activations, f16 KV cache, flash
    attention auto) and on an all-F32 copy of it with f32 KV cache and no flash
    attention (so only the architecture, not llama.cpp's approximations, can
    make a difference)."""
    path = MODELS_DIR / FIXTURES[name]["file"]
    quant = llama_logprobs(path, prompts, n_vocab)
    with tempfile.TemporaryDirectory(prefix="troupe-f32-") as tmp:
        f32_path = Path(tmp) / f"{name}.f32.gguf"
        t0 = time.monotonic()
        write_f32_gguf(path, f32_path)
        print(f"[{name}] wrote F32 copy in {time.monotonic() - t0:.0f}s", flush=True)
        f32 = llama_logprobs(f32_path, prompts, n_vocab, F32_SERVER_ARGS)
    return [{"llama_cpp_quantized_gguf_default_server": compare_logprobs(r, q),
             "llama_cpp_f32_gguf_f32_kv_no_flash_attn": compare_logprobs(r, f)}
            for r, q, f in zip(ref_logits, quant, f32)]


def fixture_cases(name: str) -> list[tuple[str, str, list[int], int, bool]]:
    """(file suffix, prompt, token ids, top-k, write full logits) per fixture."""
    fx = FIXTURES[name]
    cases = [("", fx["prompt"], fx["tokens"], fx["top_k"], fx["full_logits"])]
    if name in LONG_FIXTURES:
        lf = LONG_FIXTURES[name]
        greedy_fx = json.loads((GREEDY_DIR / f"{name}.json").read_text())
        case = next(cc for cc in greedy_fx["cases"] if cc["name"] == lf["greedy_case"])
        cases.append((".long", case["prompt"], case["prompt_tokens"], lf["top_k"], False))
    return cases


def cmd_fixtures(args) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in args.model or list(FIXTURES):
        model = Model(MODELS_DIR / FIXTURES[name]["file"], dtype=args.dtype)
        cases = fixture_cases(name)
        all_logits = []
        for suffix, _, tokens, _, _ in cases:
            t0 = time.monotonic()
            all_logits.append(model.forward(tokens))
            print(f"[{name}{suffix}] forward over {len(tokens)} tokens in {time.monotonic() - t0:.1f}s; "
                  f"top-5 {top_k(all_logits[-1], 5)[0]}", flush=True)
        compares = [None] * len(cases)
        if args.compare_llama:
            compares = llama_comparisons(name, [c[2] for c in cases], all_logits, model.cfg.n_vocab)
        for (suffix, prompt, tokens, k, full), logits, compare in zip(cases, all_logits, compares):
            logits_file = None
            if full:
                logits_file = f"{name}{suffix}.logits.f32"
                logits.astype("<f4").tofile(OUT_DIR / logits_file)
            rec = fixture_record(name, model, prompt, tokens, k, logits, logits_file, compare)
            out = OUT_DIR / f"{name}{suffix}.json"
            out.write_text(json.dumps(rec, indent=1, ensure_ascii=False) + "\n")
            print(f"[{name}{suffix}] wrote {out}" + (f"\n  {json.dumps(compare)}" if compare else ""),
                  flush=True)
        del model


def validate_model(model: Model, name: str, max_steps: int, only: list[str] | None = None) -> list[dict]:
    fx = json.loads((GREEDY_DIR / f"{name}.json").read_text())
    results = []
    for case in fx["cases"]:
        if only and case["name"] not in only:
            continue
        gen = case["tokens"][:max_steps]
        seq = case["prompt_tokens"] + gen[:-1]
        t0 = time.monotonic()
        logits = model.forward(seq, all_logits=True)[len(case["prompt_tokens"]) - 1:]  # (steps, vocab)
        lp = log_softmax(logits)
        agree, first_div, max_lp_diff, disagree = [], None, 0.0, []
        for i, t in enumerate(gen):
            am = int(np.argmax(logits[i]))
            agree.append(am == t)
            tp = case["top_probs"][i]
            for q in tp:
                max_lp_diff = max(max_lp_diff, abs(lp[i, q["id"]] - q["logprob"]))
            if am != t:
                first_div = i if first_div is None else first_div
                # (step, llama.cpp's top1-top2 margin, reference's margin of its pick over t)
                disagree.append((i, round(tp[0]["logprob"] - tp[1]["logprob"], 3),
                                 round(float(lp[i, am] - lp[i, t]), 3)))
        r = {"case": case["name"], "prompt_tokens": len(case["prompt_tokens"]), "steps": len(gen),
             "argmax_agree": int(sum(agree)), "first_divergence": first_div,
             "disagreements(step,llama_margin,ref_margin)": disagree,
             "max_abs_top3_logprob_diff": round(float(max_lp_diff), 4),
             "seconds": round(time.monotonic() - t0, 1)}
        print(f"  {r}", flush=True)
        results.append(r)
    return results


def cmd_validate(args) -> None:
    summary = {}
    for name in args.model or list(FIXTURES):
        print(f"[{name}] validating against {GREEDY_DIR / (name + '.json')}", flush=True)
        model = Model(MODELS_DIR / FIXTURES[name]["file"], dtype=args.dtype)
        summary[name] = validate_model(model, name, args.max_steps, args.case)
        del model
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1) + "\n")


def cmd_compare(args) -> None:
    """Logit agreement with llama.cpp on the fixture prompts and on the longest
    greedy-fixture prompt of each model (no fixture files are written)."""
    summary = {}
    for name in args.model or list(FIXTURES):
        model = Model(MODELS_DIR / FIXTURES[name]["file"], dtype=args.dtype)
        greedy_fx = json.loads((GREEDY_DIR / f"{name}.json").read_text())
        longest = max(greedy_fx["cases"], key=lambda cc: len(cc["prompt_tokens"]))
        prompts = {f"fixture{sfx}": toks for sfx, _, toks, _, _ in fixture_cases(name)}
        prompts[f"greedy:{longest['name']}"] = longest["prompt_tokens"]
        ref = [model.forward(t) for t in prompts.values()]
        res = llama_comparisons(name, list(prompts.values()), ref, model.cfg.n_vocab)
        summary[name] = {}
        for label, toks, r in zip(prompts, prompts.values(), res):
            summary[name][label] = {"n_tokens": len(toks), **r}
            print(f"[{name}] {label} ({len(toks)} tokens)", flush=True)
            for kind, c in r.items():
                print(f"    {kind}: max|dlogp| {c['max_abs_logprob_diff_where_llama_logprob_gt_-20']:.2e}"
                      f" top100 max {c['max_abs_logprob_diff_top100_of_reference']:.2e}"
                      f" mean {c['mean_abs_logprob_diff_top100_of_reference']:.2e}"
                      f" argmax {c['argmax_reference']}/{c['argmax_llama_cpp']}", flush=True)
        del model
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1) + "\n")


def cmd_ablate(args) -> None:
    """Wrong variants must do worse than the chosen ones."""
    variants = [
        ("smollm2-135m", {"rope_style": "norm"}), ("smollm2-135m", {"rope_style": "neox"}),
        ("qwen2.5-coder-0.5b", {"rope_style": "neox"}), ("qwen2.5-coder-0.5b", {"rope_style": "norm"}),
        ("gemma3-270m", {}), ("gemma3-270m", {"gemma_norm_offset": 1.0}),
    ]
    for name, kw in variants:
        if args.model and name not in args.model:
            continue
        print(f"[{name}] variant {kw or 'default'}", flush=True)
        model = Model(MODELS_DIR / FIXTURES[name]["file"], dtype=args.dtype, **kw)
        validate_model(model, name, args.max_steps, args.case)
        del model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd, default_dtype in (("fixtures", "float64"), ("validate", "float32"), ("ablate", "float32"),
                               ("compare", "float32")):
        sp = sub.add_parser(cmd)
        sp.add_argument("--model", action="append", choices=sorted(FIXTURES))
        sp.add_argument("--dtype", choices=["float32", "float64"], default=default_dtype)
        if cmd == "fixtures":
            sp.add_argument("--compare-llama", action="store_true")
        elif cmd == "compare":
            sp.add_argument("--json-out")
        else:
            sp.add_argument("--max-steps", type=int, default=64)
            sp.add_argument("--case", action="append", help="only these greedy case names")
            sp.add_argument("--json-out")
    args = ap.parse_args()
    {"fixtures": cmd_fixtures, "validate": cmd_validate, "ablate": cmd_ablate,
     "compare": cmd_compare}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
