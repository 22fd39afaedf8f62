#!/usr/bin/env bash
# Runs the GPU suite built by scripts/build-gpu-suite.sh on the GPU machine, then the step timings
# (advtrain-gpu-step, and torch_step.py with the machine's PyTorch; GPU_STEP_ARGS passes options such
# as --gp-micro-batch 8), and writes the reports to the folder given as argument.
# Usage: bash run-gpu-suite.sh REPORT_DIR [BINARY]
# The CUDA libraries the binary needs (libcublas.so.13, libcurand.so.10, libcudart.so.13, libnvrtc)
# are taken from the first folder found among $CUDA_LIB_DIR and PyTorch's nvidia/cu13 wheels; the
# driver (libcuda.so.1) is the machine's own.
set -euo pipefail
REPORT=${1:?usage: run-gpu-suite.sh REPORT_DIR [BINARY]}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${2:-$HERE/advtrain-gpu-suite}
[[ -x "$BIN" ]] || { echo "run-gpu-suite.sh: no binary at $BIN (build it with scripts/build-gpu-suite.sh)" >&2; exit 1; }
mkdir -p "$REPORT"

LIBS=${CUDA_LIB_DIR:-}
if [[ -z "$LIBS" ]]; then
  FOUND=$(find / -path /proc -prune -o -name 'libcublas.so.13' -print 2>/dev/null | head -1 || true)
  LIBS=$(dirname "${FOUND:-/nonexistent/x}")
fi
[[ -f "$LIBS/libcublas.so.13" ]] || { echo "run-gpu-suite.sh: libcublas.so.13 not found; set CUDA_LIB_DIR" >&2; exit 1; }

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "libraries: $LIBS"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
} | tee "$REPORT/environment.txt"

set +e
LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" CANDLE_GRAD_DO_NOT_DETACH=1 \
  "$BIN" --nocapture --test-threads 1 2>&1 | tee "$REPORT/suite.txt"
STATUS=${PIPESTATUS[0]}
set -e
echo "exit status: $STATUS" | tee -a "$REPORT/suite.txt"

# Step timings: advtrain's bench, then the same model and steps in PyTorch, on the same GPU.
if [[ -x "$HERE/advtrain-gpu-step" ]]; then
  LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" CANDLE_GRAD_DO_NOT_DETACH=1 \
    "$HERE/advtrain-gpu-step" ${GPU_STEP_ARGS:-} 2>&1 | tee "$REPORT/timings-advtrain.txt" || true
fi
PYTHON=${PYTHON:-$(command -v python3 || true)}
if [[ -n "$PYTHON" && -f "$HERE/torch_step.py" ]]; then
  "$PYTHON" "$HERE/torch_step.py" 2>&1 | tee "$REPORT/timings-torch.txt" || true
fi
exit "$STATUS"
