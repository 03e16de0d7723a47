#!/usr/bin/env bash
# Build the wheel, install it (not editable) in a fresh virtual environment and run the main jobs
# from an empty folder, as a user of the released package would: `eomt configs` (a listing, a
# preset), a tiny `eomt demo` (the bundled synthetic config), and the own-data journey on a bundled
# custom config: `eomt data synthetic` writes a small COCO panoptic folder, `eomt data check` and
# `eomt train` read it.
# Exits non-zero on the first failure. Usage: bash scripts/wheel_check.sh
# (PYTHON=... names the interpreter whose pip builds and installs; default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/eomt-wheel-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
step() { echo "wheel_check [${SECONDS}s]: $*"; }

step "building the wheel"
# From a copy of the sources, so that the checkout gets no build/ or egg-info folders and the
# package data must come from pyproject.toml (the checkout's configs/ link plays no part).
mkdir "$work/sources"
cp pyproject.toml README.md "$work/sources/"
mkdir "$work/sources/src"
tar -C src --exclude=__pycache__ --exclude='*.egg-info' -cf - . | tar -C "$work/sources/src" -xf -
"$PYTHON" -m pip wheel -qq --no-deps -w "$work/dist" "$work/sources"
wheel=$(ls "$work"/dist/eomt-*.whl)

step "installing $(basename "$wheel") in a fresh virtual environment"
# No pip inside the fresh environment: the building interpreter's pip installs into it (--python).
"$PYTHON" -m venv --without-pip "$work/venv"
py="$work/venv/bin/python"
eomt="$work/venv/bin/eomt"
pip=("$PYTHON" -m pip --python "$py" install -qq --no-compile)
# The CPU build of torch first, so that no CUDA packages are pulled in. --no-compile: no
# byte-compiling of every installed module; those a command imports are compiled on first import.
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" "$wheel"
"$py" -c "import eomt, sys; sys.exit(0 if '$repo' not in eomt.__file__ else 'eomt imported from the checkout')"

mkdir "$work/run"
cd "$work/run"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# A network small enough for seconds on a CPU.
tiny=(model.embed_dim=32 model.depth=2 model.num_heads=2 model.num_blocks=1 model.img_size=[64,64]
      model.num_queries=4 data.batch_size=2 data.num_workers=0 train.num_points=64
      train.warmup_steps=[1,1] train.threads=2)

step "eomt configs"
"$eomt" configs > configs.txt
# Every YAML of the source tree is in the wheel and listed (the first block of rows).
expected=$(cd "$repo/src/eomt/configs" && find . -name '*.yaml' | sed 's|^\./||; s|\.yaml$||' | sort)
listed=$(sed -n '2,/^$/p' configs.txt | awk 'NF {print $1}' | sort)
if [ "$expected" != "$listed" ]; then
  echo "wheel_check: the installed package lists other configs than src/eomt/configs holds:" >&2
  diff <(echo "$expected") <(echo "$listed") >&2 || true
  exit 1
fi
"$eomt" configs coco_panoptic_eomt_small_640 > small.yaml
grep -q "dataset: coco_panoptic$" small.yaml

step "eomt demo (tiny)"
"$eomt" demo --no-progress --out demo "${tiny[@]}" train.max_steps=2 data.options.size=64 \
  data.options.train_num_images=8 data.options.val_num_images=4
test -s demo/report.json && test -s demo/model.safetensors

step "eomt data synthetic, data check and train custom/coco_panoptic (tiny)"
"$eomt" data synthetic my_data --format coco_panoptic_json --train 4 --val 2 --size 64 > /dev/null
"$eomt" data check configs/custom/coco_panoptic.yaml data.root=my_data > check.txt
# At the config's default precision (bf16-mixed), with the recipe's gradient clipping.
"$eomt" train custom/coco_panoptic --no-progress data.root=my_data "${tiny[@]}" train.max_steps=2 \
  data.scale_range=[0.8,1.25] train.out_dir=runs/custom
test -s runs/custom/model.safetensors

step "ok"
