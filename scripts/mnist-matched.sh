#!/usr/bin/env bash
# FGM against gradient penalty at matched weights on MNIST, over a sweep of eps (book, "FGM and
# gradient penalty", "Matching the weights"; issue: where in eps do the two part?):
#   adversarial/             FGM on the adversarial loss alone   vs  gradient penalty at eps
#   clean-plus-adversarial/  FGM on clean + adversarial          vs  gradient penalty at eps / 2
# Both with the baseline. Robust accuracy in both threat models, pixels kept in [0, 1].
#
#   bash scripts/mnist-matched.sh OUT_DIR [SEEDS] [EPOCHS] [SUBSET] [EPS_LIST]
#
# The defaults are the 2-seed sweep on 2,000 images; the 5-seed run at the full size (5,000 images,
# 10 epochs) around where the two part: bash scripts/mnist-matched.sh \
#   data/results/mnist-matched-5-seeds 5 10 5000 0.3,1,3
set -euo pipefail
out=${1:-data/results/mnist-matched} seeds=${2:-2} epochs=${3:-5} subset=${4:-2000}
eps=${5:-0.1,0.3,1,3}
common=(--seeds "$seeds" --epochs "$epochs" --subset "$subset" --eps "$eps")
cargo run --release -- experiment mnist --methods baseline,fgm,gradient-penalty "${common[@]}" \
  --fgm-objective adversarial --gp-scale 1 --out "$out/adversarial"
cargo run --release -- experiment mnist --methods baseline,fgm,gradient-penalty "${common[@]}" \
  --fgm-objective clean-plus-adversarial --gp-scale 0.5 --out "$out/clean-plus-adversarial"
