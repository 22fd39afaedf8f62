#!/usr/bin/env bash
# Builds the GPU suite (tests/gpu.rs) with the `cuda` feature on a machine WITHOUT a GPU, as ONE
# stripped test binary under target/gpu-suite/, ready to copy to the GPU machine (which has no Rust
# toolchain) together with scripts/run-gpu-suite.sh. The CUDA 13.0 compiler and libraries come from
# pinned PyPI wheels installed into target/cuda/ (no system CUDA needed); a stub libcuda.so (every
# driver call answers CUDA_ERROR_NO_DEVICE) stands in for the driver at link time and lets the binary's
# CPU part run here. Cold build: about 20 minutes on 2 cores (candle-kernels alone about 8).
# Facts behind the pins: ../shared/notes/cuda-build.md (cudarc 0.19 reads nvcc's version and refuses
# above 13.4; nvcc 13.0 emits PTX 9.0, the newest a 580 driver loads).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/gpu-suite
ROOT_PARENT=target/cuda
WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35)

die() { echo "build-gpu-suite.sh: $*" >&2; exit 1; }
for tool in cargo python3 gcc strip; do
  command -v "$tool" >/dev/null || die "$tool is missing (needs: cargo, python3 with pip, gcc, binutils' strip)"
done
python3 -m pip --version >/dev/null 2>&1 || die "pip is missing: python3 -m ensurepip"

ROOT="$ROOT_PARENT/nvidia/cu13"
if [[ ! -x "$ROOT/bin/nvcc" ]]; then
  echo "== installing the CUDA 13.0 compiler and libraries from PyPI into $ROOT_PARENT"
  python3 -m pip install --quiet --no-deps --target "$ROOT_PARENT" "${WHEELS[@]}" \
    || die "pip could not install the CUDA wheels: check access to PyPI"
fi
[[ -x "$ROOT/bin/nvcc" ]] || die "no nvcc under $ROOT/bin after installing the wheels"
ROOT=$(cd "$ROOT" && pwd)

# candle 0.11 links cudarc with dynamic-linking: the linker wants unversioned names.
for lib in cudart cublas cublasLt nvrtc; do
  [[ -e "$ROOT/lib/lib$lib.so" ]] || ln -s "lib$lib.so.13" "$ROOT/lib/lib$lib.so"
done
[[ -e "$ROOT/lib/libcurand.so" ]] || ln -s libcurand.so.10 "$ROOT/lib/libcurand.so"

# A stub driver: no wheel ships libcuda.so. Every cu* function cudarc declares returns 100
# (CUDA_ERROR_NO_DEVICE).
STUBS="$ROOT_PARENT/stubs"
if [[ ! -f "$STUBS/libcuda.so" ]]; then
  echo "== generating the stub libcuda.so from cudarc's declarations"
  cargo fetch --quiet
  SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys 2>/dev/null | tail -1)
  [[ -n "$SYS" ]] || die "cudarc 0.19 sources not found in the cargo registry (cargo fetch failed?)"
  mkdir -p "$STUBS"
  grep -rhoE '\bfn cu[A-Za-z0-9_]+' "$SYS" | sed 's/^fn //' | sort -u \
    | awk '{print "int " $1 "(void) { return 100; }"}' > "$STUBS/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUBS/libcuda.so" "$STUBS/stub.c"
  ln -sf libcuda.so "$STUBS/libcuda.so.1"
fi
STUBS=$(cd "$STUBS" && pwd)

echo "== building tests/gpu.rs with --no-default-features --features cuda (CUDA_COMPUTE_CAP=90: H100 / H200)"
export CUDA_ROOT="$ROOT" CUDA_PATH="$ROOT" PATH="$ROOT/bin:$PATH" CUDA_COMPUTE_CAP=90
export LIBRARY_PATH="$ROOT/lib:$STUBS${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
# built NAME CARGO_ARGS...: builds target NAME with the cuda feature (`cargo CARGO_ARGS --no-run`) and
# prints its executable's path.
built() {
  local name=$1 path
  shift
  path=$(cargo "$@" --no-default-features --features cuda --no-run --message-format=json \
    | python3 -c 'import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$name")
  [[ -n "$path" && -x "$path" ]] || die "cargo built no executable for $name"
  echo "$path"
}
BIN=$(built gpu test --release -p advtrain --test gpu)

echo "== building the step-timing bench (experiments/benches/gpu_step.rs) with the same features"
BENCH=$(built gpu_step bench -p advtrain-experiments --bench gpu_step)

mkdir -p "$OUT"
cp "$BIN" "$OUT/advtrain-gpu-suite"
cp "$BENCH" "$OUT/advtrain-gpu-step"
strip "$OUT/advtrain-gpu-suite" "$OUT/advtrain-gpu-step"
cp scripts/run-gpu-suite.sh scripts/torch_step.py "$OUT/"
for f in advtrain-gpu-suite advtrain-gpu-step; do
  SIZE=$(stat -c %s "$OUT/$f")
  (( SIZE < 64 * 1024 * 1024 )) || die "$f is $SIZE bytes stripped, over the 64 MiB one copy allows"
  echo "== $OUT/$f: $((SIZE / 1024 / 1024)) MiB (copy each file on its own)"
done

echo "== its CPU part here, against the stub driver (GPU tests skipped)"
LD_LIBRARY_PATH="$ROOT/lib:$STUBS" CANDLE_GRAD_DO_NOT_DETACH=1 \
  "$OUT/advtrain-gpu-suite" --skip gpu_ --nocapture --test-threads 1
echo "== the timing bench starts here (tiny model, CPU): it runs, its figures mean nothing"
LD_LIBRARY_PATH="$ROOT/lib:$STUBS" "$OUT/advtrain-gpu-step" --layers 1 --hidden 64 --batch 4 --seq 8 --rounds 2
echo "== ready: copy $OUT/ to the GPU machine and run: bash run-gpu-suite.sh REPORT_DIR"
