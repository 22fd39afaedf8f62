#!/usr/bin/env bash
# What an epoch of `experiment clue` costs on this machine, with BERT-base's shapes: writes a
# random-weight BERT-base (bert-base-chinese's vocabulary) and 64 THUCNews headlines as CLUE JSONL
# (TNEWS-like: short news titles), runs baseline, FGM and gradient penalty for one epoch of two
# batches with the seeds' settings, and prints the seconds per step. The book's "Experiments"
# chapter scales them to TNEWS and IFLYTEK.
#
#   bash scripts/clue-cost.sh OUT_DIR
set -euo pipefail
out=$1
mkdir -p "$out"
cargo run --release -p advtrain-experiments --example random_bert -- data/bert-base-chinese-vocab.txt "$out/bert-base-random"
# 64 headlines in CLUE's format, labels as TNEWS writes them (strings).
# (xz stops on a closed pipe once head has its lines: not an error here.)
{ xz -dc data/thucnews_10w.tsv.xz || true; } | head -n 64 \
  | python3 -c 'import json,sys; [print(json.dumps({"label": l.split("\t",1)[0], "sentence": l.split("\t",1)[1].strip()}, ensure_ascii=False)) for l in sys.stdin]' \
  > "$out/train.json"
# A two-line dev file (also the test set): evaluation adds next to nothing to the epoch's time.
head -n 2 "$out/train.json" > "$out/dev.json"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "commit: $(git rev-parse --short HEAD)"
  echo "command: bash scripts/clue-cost.sh $*"
} > "$out/machine.txt"
cargo run --release -- experiment clue --model "$out/bert-base-random" --train "$out/train.json" \
  --dev "$out/dev.json" --seeds 1 --epochs 1 --out "$out/run" | tee "$out/log.txt"
# Two optimiser steps of 32 headlines per epoch.
awk -F, 'NR > 1 { printf "%s: %.1f s per epoch of 2 steps\n", $2, $13 }' "$out/run/results.csv" | tee -a "$out/log.txt"
