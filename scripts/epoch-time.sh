#!/usr/bin/env bash
# Epoch time of two builds of the `advtrain` binary on the same settings, interleaved (before, after,
# before, after, ...) so that drift of the machine hits both alike: one epoch of baseline, FGM and
# gradient penalty, seed 1, on MNIST, THUCNews and Rotten Tomatoes (small subsets). Writes every run's
# rows (seconds and accuracies per epoch) to OUT/rows.csv with a column saying which build.
#
#   bash scripts/epoch-time.sh BEFORE_BINARY AFTER_BINARY OUT_DIR [REPEATS]
#
# Run from the repository root on a quiet machine (book, "Models", section "Speed of a real run").
set -euo pipefail
before=$1 after=$2 out=$3 repeats=${4:-2}
mkdir -p "$out"
rows="$out/rows.csv"
echo "build,repeat,experiment,method,eps,seed,epoch,train_loss,dev_accuracy,test_accuracy,fgsm_accuracy,pgd_accuracy,passes_forward,passes_backward,seconds" > "$rows"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "before: $before ($("$before" --version 2>/dev/null || echo advtrain))"
  echo "after: $after"
  echo "command: bash scripts/epoch-time.sh $*"
} > "$out/machine.txt"
run() { # build binary experiment subset
  local build=$1 binary=$2 experiment=$3 subset=$4 repeat=$5
  local dir
  dir=$(mktemp -d)
  "$binary" experiment "$experiment" --methods baseline,fgm,gradient-penalty --seeds 1 --epochs 1 \
    --subset "$subset" --out "$dir" > "$dir/log.txt" 2>&1 || { cat "$dir/log.txt"; exit 1; }
  tail -n +2 "$dir/results.csv" | sed "s/^/$build,$repeat,/" >> "$rows"
  echo "$build $experiment repeat $repeat: $(tail -n +2 "$dir/results.csv" | cut -d, -f2,13 | tr '\n' ' ')"
  rm -rf "$dir"
}
for repeat in $(seq 1 "$repeats"); do
  for spec in mnist:2000 thucnews:1000 rotten-tomatoes:300; do
    experiment=${spec%%:*} subset=${spec##*:}
    # Alternate which build goes first, so neither always runs on a warmer machine.
    if (( repeat % 2 )); then order="before after"; else order="after before"; fi
    for build in $order; do
      if [[ $build == before ]]; then binary=$before; else binary=$after; fi
      run "$build" "$binary" "$experiment" "$subset" "$repeat"
    done
  done
done
# The summary the book quotes: the median epoch seconds over the repeats per experiment, method and
# build, their ratio, and the test accuracy of each build (the same seed: equal up to rounding).
python3 - "$rows" > "$out/summary.md" <<'PY'
import csv, statistics, sys
runs = {}
for row in csv.DictReader(open(sys.argv[1])):
    key = (row["experiment"], row["method"])
    runs.setdefault(key, {"before": [], "after": []})[row["build"]].append(row)
print("| experiment | method | before (s) | after (s) | before / after | test accuracy before | after |")
print("|---|---|---|---|---|---|---|")
for (experiment, method), builds in sorted(runs.items()):
    median = {b: statistics.median(float(r["seconds"]) for r in rows) for b, rows in builds.items()}
    accuracy = {b: float(rows[0]["test_accuracy"]) for b, rows in builds.items()}
    print(f"| {experiment} | {method} | {median['before']:.2f} | {median['after']:.2f} | "
          f"{median['before'] / median['after']:.2f} | {accuracy['before']:.3f} | {accuracy['after']:.3f} |")
PY
cat "$out/summary.md"
