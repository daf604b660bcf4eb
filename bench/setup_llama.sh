#!/usr/bin/env bash
# Builds the speed peer, llama.cpp, from the sources vendored in the
# llama-cpp-python sdist on PyPI (the only way to get them here), into
# bench/.cache/llama.cpp (git-ignored); a finished build is reused.
# Prints the bin directory on the last line. Env: LLAMA_CPP_PYTHON
# (version, default the one the golden fixtures came from), JOBS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
ver=${LLAMA_CPP_PYTHON:-0.3.36}
cache=bench/.cache/llama.cpp
bin="$cache/build-$ver/bin"
if [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-batched-bench" ] && [ -x "$bin/llama-server" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache/dl"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if ! command -v cmake >/dev/null; then
  echo "installing cmake from PyPI" >&2
  python3 -m pip install -q cmake >&2
fi
sdist=$(ls "$cache"/dl/llama_cpp_python-"$ver".tar.gz 2>/dev/null || true)
if [ -z "$sdist" ]; then
  echo "downloading llama-cpp-python $ver (sdist)" >&2
  # Only the sdist itself as source: its build tools (cmake, ninja) may come
  # as wheels when pip prepares its metadata, instead of being compiled.
  python3 -m pip download -q --no-binary llama-cpp-python --no-deps -d "$cache/dl" \
    "llama-cpp-python==$ver" >&2
  sdist="$cache/dl/llama_cpp_python-$ver.tar.gz"
fi
src="$cache/src-$ver"
if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
  rm -rf "$src" && mkdir -p "$src"
  tar -xzf "$sdist" -C "$src" --strip-components=1
fi
# The flags of the speed issue; note that on Sapphire Rapids with GCC 12 this
# build dies in ggml's AMX path unless weight repacking is off (run it with
# `--repack 0` / `--no-repack`; see DEVELOPERS.md).
echo "building llama.cpp (about 7 minutes on 2 cores)" >&2
cmake -S "$src/vendor/llama.cpp" -B "$cache/build-$ver" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF >&2
cmake --build "$cache/build-$ver" -j "${JOBS:-2}" \
  --target llama-bench llama-batched-bench llama-server >&2
echo "$bin"
