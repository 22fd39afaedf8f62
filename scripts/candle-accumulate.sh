#!/usr/bin/env bash
# Builds the side-by-side bench (benches/side_by_side.rs) against a copy of candle-core in which the
# backward pass stores the first gradient reaching a node instead of adding it into fresh zeros
# (scripts/candle_accumulate.py; the change of candle's open pull requests #3578 and #3822), and
# prints the bench's executable. A measurement of what candle's gradient accumulation costs the
# steps: the library itself builds against candle as published.
#
#   bash scripts/candle-accumulate.sh          # then: scripts/side-by-side.sh --candle-accumulate
#
# The copy of candle and of this workspace (so that the patched lockfile stays out of this one) live
# in target/candle-accumulate/; the build shares target/ with the main one (only candle and what
# depends on it are built again).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/target/candle-accumulate
candle=$(cargo metadata --format-version 1 --locked |
    python3 -c 'import json, os, sys
packages = json.load(sys.stdin)["packages"]
found = [p for p in packages if p["name"] == "candle-core" and p["source"] and "registry" in p["source"]]
if len(found) != 1:
    sys.exit(f"expected one candle-core from the registry, found {len(found)}")
print(os.path.dirname(found[0]["manifest_path"]))')
rm -rf "$work"
mkdir -p "$work/workspace"
cp -r "$candle" "$work/candle-core"
chmod -R u+w "$work/candle-core"
python3 scripts/candle_accumulate.py "$work/candle-core/src/backprop.rs"
git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$work/workspace"
cd "$work/workspace"
CARGO_TARGET_DIR=$root/target CANDLE_GRAD_DO_NOT_DETACH=1 cargo bench -p advtrain --bench side_by_side \
    --no-run --message-format=json \
    --config "patch.crates-io.candle-core.path=\"$work/candle-core\"" 2>"$work/build.log" |
    python3 "$root/scripts/bench_executable.py" side_by_side >"$work/executable"
if [ ! -s "$work/executable" ]; then
    echo "building the bench against the patched candle failed; see $work/build.log" >&2
    exit 1
fi
# The patch took: the copy's lockfile resolves candle-core to the path (no registry source).
if grep -A2 '^name = "candle-core"$' Cargo.lock | grep -q '^source'; then
    echo "the copy still resolves candle-core from the registry; the patch did not apply" >&2
    exit 1
fi
cat "$work/executable"
