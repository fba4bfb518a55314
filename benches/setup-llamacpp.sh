#!/usr/bin/env bash
# Installs llama.cpp's Python binding (llama-cpp-python) into a virtual environment, for the
# reference benchmark benches/llamacpp_reference.py. Benchmarks only: no test needs it.
#
#   bash benches/setup-llamacpp.sh [VENV_DIR]      # default: target/llamacpp-venv
#
# PyPI ships llama-cpp-python as a source distribution only, so pip compiles the vendored
# llama.cpp with CMake (CPU backend, -march=native, no OpenMP, no curl). cmake and ninja come
# as binary wheels from PyPI during the build; a C/C++ compiler (gcc/g++) must be installed.
# On 2 cores the compile takes roughly 10-20 minutes. Idempotent: does nothing when the venv
# already imports llama_cpp.
#
# Environment overrides:
#   LLAMA_CPP_PYTHON_VERSION  pin a version (default: the version this was tested with)
#   CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs (default: nproc)
#   PYTHON  interpreter used to create the venv (default: python3)
set -euo pipefail

VENV="${1:-target/llamacpp-venv}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1; then
    echo "llama-cpp-python already installed in $VENV ($("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)'))"
    exit 0
fi

for tool in gcc g++; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool not found; install a C/C++ toolchain (Debian: apt-get install -y build-essential)" >&2
        exit 1
    fi
done

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

"$VENV/bin/python" -m pip install --upgrade pip >/dev/null

# CPU-only build of the vendored llama.cpp. GGML_NATIVE tunes for this machine's ISA (AVX2/FMA/...);
# OpenMP off so llama.cpp uses its own thread pool (the thread count is what --threads says).
# LLAVA_BUILD=OFF skips the multimodal library (mtmd), which the text-only benchmark never loads
# (llama_cpp imports it lazily) and which is about a fifth of the compile.
# AMX is left out: some virtual machines list AMX in /proc/cpuinfo without enabling its register state, and
# ggml's AMX kernels then die on their first `ldtilecfg` (seen on a Xeon VM here). GCC lets an explicit -mno-*
# win over -march=native whatever the order.
NO_AMX=""
if [ "$(uname -m)" = "x86_64" ] && grep -q amx_tile /proc/cpuinfo 2>/dev/null; then
    NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

# --no-cache-dir: a wheel cached from another machine could carry another -march=native.
"$VENV/bin/python" -m pip install --no-cache-dir "llama-cpp-python==${VERSION}" jinja2

"$VENV/bin/python" -c 'import llama_cpp; print("installed llama-cpp-python", llama_cpp.__version__)'
