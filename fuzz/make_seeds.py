#!/usr/bin/env python3
"""Writes the seed corpus of the gguf_reader fuzz target: small valid GGUF
files (spec: ggml docs/gguf.md), a few hundred bytes to ~3 KB each.

    python3 fuzz/make_seeds.py            # writes fuzz/seeds/gguf_reader/*
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "gguf_reader")

# (type id, struct format) of the scalar metadata types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i",
       F32: "<f", BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}
# ggml type id -> (block elements, block bytes)
TYPES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
         8: (32, 34), 9: (32, 36), 12: (256, 144), 13: (256, 176), 14: (256, 210),
         15: (256, 292), 30: (1, 2)}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def payload(ty, v):
    if ty == STR:
        return gstr(v)
    if ty == ARR:
        elem, items = v
        out = struct.pack("<IQ", elem, len(items))
        return out + b"".join(payload(elem, x) for x in items)
    return struct.pack(FMT[ty], v)


def gguf(kvs, tensors, version=3, alignment=32):
    """kvs: [(key, type, value)]; tensors: [(name, dims, ggml type)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, ty, v in kvs:
        out += gstr(key) + struct.pack("<I", ty) + payload(ty, v)
    offsets, sizes, off = [], [], 0
    for _, dims, ty in tensors:
        n = 1
        for d in dims:
            n *= d
        be, bb = TYPES[ty]
        size = n // be * bb
        offsets.append(off)
        sizes.append(size)
        off = (off + size + alignment - 1) // alignment * alignment
    for (name, dims, ty), o in zip(tensors, offsets):
        out += gstr(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ty, o)
    if not tensors:
        return out
    out += b"\0" * (-len(out) % alignment)
    end = offsets[-1] + sizes[-1]
    return out + bytes((i * 31 + 7) % 251 for i in range(end))


SCALARS = [("t.u8", U8, 200), ("t.i8", I8, -100), ("t.u16", U16, 60000),
           ("t.i16", I16, -30000), ("t.u32", U32, 4000000000), ("t.i32", I32, -2),
           ("t.u64", U64, 2**64 - 1), ("t.i64", I64, -2**63), ("t.f32", F32, 0.5),
           ("t.f64", F64, 3.25), ("t.bool", BOOL, 1), ("t.str", STR, "héllo")]
ARRAYS = [("t.a.u32", ARR, (U32, [1, 2, 3])), ("t.a.str", ARR, (STR, ["a", "", "ü"])),
          ("t.a.f32", ARR, (F32, [0.25, -1.0])), ("t.a.empty", ARR, (I64, [])),
          ("t.a.nested", ARR, (ARR, [(U8, [1]), (ARR, [(BOOL, [1, 0])])]))]

SEEDS = {
    "empty-v3": gguf([], []),
    "empty-v2": gguf([], [], version=2),
    "values-v3": gguf(SCALARS + ARRAYS, []),
    "sample-v3": gguf(SCALARS + ARRAYS + [("general.architecture", STR, "llama")],
                      [("a.weight", [32, 2], 8), ("b.bias", [3], 0), ("c.weight", [256], 12)]),
    "sample-v2": gguf([("general.architecture", STR, "qwen2"), ("qwen2.block_count", U32, 1)],
                      [("token_embd.weight", [32, 4], 2), ("output_norm.weight", [32], 0)],
                      version=2),
    "aligned-64": gguf([("general.alignment", U32, 64)],
                       [("x", [2, 3, 4, 5], 1), ("y", [7], 30), ("z", [32], 3)], alignment=64),
    "tokenizer": gguf([("tokenizer.ggml.model", STR, "gpt2"),
                       ("tokenizer.ggml.tokens", ARR, (STR, ["<s>", "</s>", "a", "b", "ab"])),
                       ("tokenizer.ggml.token_type", ARR, (I32, [3, 3, 1, 1, 1])),
                       ("tokenizer.ggml.merges", ARR, (STR, ["a b"]))], []),
    "all-types": gguf([], [(f"t{ty}", [256], ty) for ty in sorted(TYPES)]),
}

if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        assert len(data) < 10_000, name
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")
