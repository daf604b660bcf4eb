#!/usr/bin/env bash
# Alternating runs of `troupe bench` and llama.cpp's `llama-bench` on the same
# model, threads and token counts. Usage:
#   LLAMA_BENCH=/path/to/llama-bench bench/compare.sh [MODEL...] 
# Env: THREADS (2), ROUNDS (3), PP (512), TG (128), LLAMA_BENCH_ARGS (extra
# llama-bench flags, e.g. "--repack 0" where AMX crashes). Prints one line per run
# and a JSON summary of medians and ratios. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2} ROUNDS=${ROUNDS:-3} PP=${PP:-512} TG=${TG:-128}
LLAMA_BENCH=${LLAMA_BENCH:?set LLAMA_BENCH to a llama-bench binary (see DEVELOPERS.md)}
cargo build --release -q -p troupe
T=./target/release/troupe
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(smollm2-135m qwen2.5-coder-0.5b gemma3-270m)
out=$(mktemp)
for m in "${models[@]}"; do
  path=$($T models >/dev/null; python3 -c "import sys;print(sys.argv[1])" "${TROUPE_DATA:-${XDG_DATA_HOME:-$HOME/.local/share}/troupe}/models/$m.gguf")
  [ -f "$path" ] || $T pull "$m"
  for r in $(seq "$ROUNDS"); do
    j=$($T bench -m "$m" -t "$THREADS" --prompt-tokens "$PP" --gen-tokens "$TG" --reps 1 --json 2>/dev/null)
    echo "troupe $m $(python3 -c 'import json,sys;d=json.loads(sys.argv[1]);print(d["prefill_tok_s"],d["decode_tok_s"])' "$j")" | tee -a "$out"
    l=$("$LLAMA_BENCH" -m "$path" -t "$THREADS" -p "$PP" -n "$TG" -r 1 -o json ${LLAMA_BENCH_ARGS:-} 2>/dev/null)
    echo "llama.cpp $m $(python3 -c 'import json,sys;d=json.loads(sys.argv[1]);pp=[x["avg_ts"] for x in d if x["n_prompt"]>0][0];tg=[x["avg_ts"] for x in d if x["n_gen"]>0][0];print(pp,tg)' "$l")" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys, collections
runs = collections.defaultdict(lambda: {"pp": [], "tg": []})
for line in open(sys.argv[1]):
    who, model, pp, tg = line.split()
    runs[(who, model)]["pp"].append(float(pp)); runs[(who, model)]["tg"].append(float(tg))
summary = {}
print(f"{'model':<20} {'test':<6} {'troupe':>9} {'llama.cpp':>10} {'ratio':>6}")
for (who, model) in sorted({k for k in runs}):
    if who != "troupe": continue
    for t in ("pp", "tg"):
        a = statistics.median(runs[("troupe", model)][t]); b = statistics.median(runs[("llama.cpp", model)][t])
        summary.setdefault(model, {})[t] = {"troupe": a, "llama_cpp": b, "ratio": a / b}
        print(f"{model:<20} {t:<6} {a:>9.1f} {b:>10.1f} {a/b:>6.2f}")
print(json.dumps(summary))
PY
