#!/usr/bin/env bash
# The side-by-side speed benchmark: advtrain against JAX on the same models and steps, in one run.
#
#   bash scripts/side-by-side.sh [--rounds N] [--steps N] [--threads 1,2] [--models mlp,embedding,cnn,minilm] [--out FILE] [--candle-accumulate]
#
# --candle-accumulate also measures the fused steps on the bench built against candle with the
# first-gradient store (scripts/candle-accumulate.sh): what candle's gradient accumulation costs.
#
# Installs JAX (pinned, CPU) from PyPI into target/jax-venv on first use, builds the advtrain side
# (benches/side_by_side.rs), then runs scripts/side_by_side.py, which asks both in turn for the same
# steps and prints medians and ratios. About 15 minutes on two cores for the four models; run it on a
# quiet machine. MINILM_BATCH sets the MiniLM-sized encoder's batch (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
JAX_VERSION=0.10.2
venv=target/jax-venv
if ! "$venv/bin/python" -c "import jax; assert jax.__version__ == '$JAX_VERSION'" 2>/dev/null; then
    echo "installing jax==$JAX_VERSION into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "jax==$JAX_VERSION" "jaxlib==$JAX_VERSION"
fi
# Build the bench and find its executable from cargo's own report of it.
bench=$(CANDLE_GRAD_DO_NOT_DETACH=1 cargo bench -p advtrain --bench side_by_side --no-run --message-format=json 2>/dev/null |
    python3 scripts/bench_executable.py side_by_side)
if [ -z "$bench" ]; then
    echo "building benches/side_by_side.rs failed; run: cargo bench --bench side_by_side --no-run" >&2
    exit 1
fi
args=()
for arg in "$@"; do
    if [ "$arg" = "--candle-accumulate" ]; then
        args+=(--rust-accumulate "$(bash scripts/candle-accumulate.sh)")
    else
        args+=("$arg")
    fi
done
exec "$venv/bin/python" scripts/side_by_side.py --rust "$bench" --python "$venv/bin/python" "${args[@]}"
