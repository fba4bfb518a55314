#!/usr/bin/env bash
# Builds sdg's CUDA binaries (`--features cuda`) on a machine with no CUDA toolkit and no GPU, as used to check
# `device: cuda` on a lent GPU machine that cannot fetch crates: nvcc, its compiler and the headers come from
# PyPI wheels (CUDA 13.0), and the libraries candle links (driver, cuBLAS, cuRAND, NVRTC) are stood in for by
# stub libraries with their real sonames, so the binaries load the GPU machine's own at run time.
#
#   bash benches/cuda-build.sh [cargo build arguments]    # default: --bench local_llm --test local_models
#
# Then on the GPU machine: put libcudart.so.13 (target/cuda13/lib) and links named libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10 and libnvrtc.so.13 to its CUDA libraries on LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/target/cuda13
stubs=$PWD/target/cuda-stubs
if [ ! -x "$root/bin/nvcc" ]; then
    mkdir -p target/cuda-wheels "$root"
    python3 -m pip download --quiet --no-deps -d target/cuda-wheels "nvidia-cuda-nvcc==13.0.*" \
        "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*"
    unpacked=$(mktemp -d)
    for wheel in target/cuda-wheels/*.whl; do unzip -q -o "$wheel" -d "$unpacked"; done
    cp -a "$unpacked"/nvidia/cu13/. "$root"/
    rm -rf "$unpacked"
    # nvcc.profile looks for headers and libraries under targets/<arch>; candle-kernels links -lcudart.
    mkdir -p "$root/targets/x86_64-linux"
    ln -sfn "$root/include" "$root/targets/x86_64-linux/include"
    ln -sfn "$root/lib" "$root/targets/x86_64-linux/lib"
    ln -sfn "$root/lib" "$root/lib64"
    ln -sfn libcudart.so.13 "$root/lib/libcudart.so"
    chmod +x "$root"/bin/* "$root"/nvvm/bin/*
fi
export PATH=$root/bin:$PATH CUDA_ROOT=$root CUDA_PATH=$root CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH=$root/lib:$stubs
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--bench local_llm --test local_models)

# The first build compiles everything and may stop at the link for want of the stubs, which are made from
# the symbols the compiled CUDA crates use.
if ! cargo build --release --features cuda "${args[@]}"; then
    mkdir -p "$stubs"
    symbols=$(for rlib in target/release/deps/lib{cudarc,candle_core,candle_kernels}-*.rlib; do nm -u "$rlib" 2>/dev/null; done |
        awk '$1 == "U" {print $2}' | grep -E '^(cu[A-Z]|cublas|curand|nvrtc)' | sort -u)
    stub() { # library soname pattern [exclude]
        grep -E "$3" <<<"$symbols" | { if [ -n "${4:-}" ]; then grep -vE "$4"; else cat; fi; } |
            sed 's/.*/void &(void) {}/' >"$stubs/$1.c"
        cc -shared -fPIC -Wl,-soname,"$2" -o "$stubs/lib$1.so" "$stubs/$1.c"
    }
    stub cuda libcuda.so.1 '^cu[A-Z]'
    stub cublasLt libcublasLt.so.13 '^cublasLt'
    stub cublas libcublas.so.13 '^cublas' '^cublasLt'
    stub curand libcurand.so.10 '^curand'
    stub nvrtc libnvrtc.so.13 '^nvrtc'
    cargo build --release --features cuda "${args[@]}"
fi
